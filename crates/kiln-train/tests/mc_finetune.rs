//! BioMedLM-style multiple-choice fine-tuning: `[PAD]`/`[CLS]`/`[SEP]` added to a GPT-2
//! tokenizer and the embeddings grown to match, options encoded as `question[SEP]` +
//! ` option[SEP]`, right-padded batches pooled at each option's final `[SEP]`, cross-entropy over
//! options — a tiny GPT-2 learns a generated question set well above chance; a model whose
//! embeddings were not grown is refused.

use kiln_data::mc::McExample;
use kiln_data::tokenizer::{Tokenizer, TokenizerKind};
use kiln_models::gpt2::{Gpt2Config, Gpt2MultipleChoice};
use kiln_schedules::Duration;
use kiln_train::burn::tensor::Device;
use kiln_train::tasks::mc::{McEncoded, MultipleChoiceTask, encode_for_head};
use kiln_train::{OptimizerConfig, Trainer, TrainerConfig};

const WORDS: [&str; 8] = [
    "red", "blue", "green", "black", "white", "grey", "pink", "brown",
];

/// "Which colour is warm?" style rows: the answer is the option that repeats a word of the
/// question (learnable by attention), at a random position.
fn rows(n: usize, seed: u64) -> Vec<McExample> {
    let mut x = seed;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as usize
    };
    (0..n)
        .map(|i| {
            let key = WORDS[next() % 8];
            let answer = next() % 4;
            let choices = (0..4)
                .map(|k| {
                    if k == answer {
                        key.to_owned()
                    } else {
                        let mut w = WORDS[next() % 8];
                        while w == key {
                            w = WORDS[next() % 8];
                        }
                        w.to_owned()
                    }
                })
                .collect();
            McExample {
                id: format!("q{i}"),
                question: format!("the word is {key} so pick it"),
                header: String::new(),
                choices,
                answer: Some(answer),
                subject: None,
                choice_type: None,
            }
        })
        .collect()
}

#[test]
fn head_learns_and_inputs_are_biomedlm_s() {
    let train_rows = rows(64, 1);
    let eval_rows = rows(32, 2);
    let texts: Vec<String> = train_rows
        .iter()
        .map(|r| format!("{} {}", r.question, r.choices.join(" ")))
        .collect();
    let mut tok =
        Tokenizer::train(TokenizerKind::Bpe, texts.iter().map(String::as_str), 300, 1).unwrap();
    let before = tok.vocab_size();
    let ids = tok
        .add_special_tokens(&["[PAD]", "[CLS]", "[SEP]"])
        .unwrap();
    assert_eq!(tok.vocab_size(), before + 3);
    let (pad, sep) = (ids[0], ids[2]);
    // `[SEP]` stays one token inside text; each option is question[SEP] + " option[SEP]"
    let enc = encode_for_head(&tok, &train_rows[0], "[SEP]", 512).unwrap();
    let q = tok
        .encode(&format!("{}[SEP]", train_rows[0].question), false)
        .unwrap();
    let o = tok
        .encode(&format!(" {}[SEP]", train_rows[0].choices[1]), false)
        .unwrap();
    assert_eq!(enc.choices[1], [q.clone(), o].concat());
    assert_eq!(*enc.choices[1].last().unwrap(), sep);
    assert_eq!(q.iter().filter(|&&t| t == sep).count(), 1);
    // longest-first truncation keeps the total
    let short = encode_for_head(&tok, &train_rows[0], "[SEP]", 6).unwrap();
    assert!(short.choices.iter().all(|c| c.len() == 6));

    let encode = |rs: &[McExample]| -> Vec<McEncoded> {
        rs.iter()
            .map(|r| encode_for_head(&tok, r, "[SEP]", 64).unwrap())
            .collect()
    };
    let device = Device::flex().autodiff();
    device.seed(0);
    let config = Gpt2Config {
        vocab_size: before,
        n_positions: 64,
        ..Gpt2Config::tiny()
    };
    let mut model = Gpt2MultipleChoice::init(&config, &device).unwrap();
    // embeddings grow to the tokenizer (the old rows unchanged)
    let old = model.transformer.wte.weight.val().into_data();
    model.transformer = model
        .transformer
        .resize_token_embeddings(tok.vocab_size())
        .unwrap();
    let grown = model.transformer.wte.weight.val();
    assert_eq!(grown.dims()[0], before + 3);
    let kept = grown.narrow(0, 0, before).into_data();
    assert_eq!(kept, old);
    let run = |dir: &std::path::Path, model: Gpt2MultipleChoice| {
        let mut task =
            MultipleChoiceTask::new(encode(&train_rows), encode(&eval_rows), 8, pad, 3, &device)
                .unwrap();
        let mut tc = TrainerConfig::new(Duration::batches(60), OptimizerConfig::adamw(3e-3, 0.0));
        // BioMedLM's recipe: warmup over half the run, then linear decay to zero
        tc.lr_schedule = serde_json::from_str(
            r#"{"name": "linear_decay_with_warmup", "t_warmup": "0.5dur", "alpha_f": 0.0}"#,
        )
        .unwrap();
        tc.eval_interval = Some(Duration::batches(60));
        tc.progress_bar = false;
        Trainer::new(tc, dir)
            .fit(model, &mut task, &mut Vec::new(), &device)
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), model);
    let acc = out.eval["accuracy"];
    assert!(acc > 0.6, "held-out accuracy {acc} (chance 0.25)");
    // wrong vocabulary is refused before training
    let small = Gpt2MultipleChoice::init(&config, &device).unwrap();
    let mut task =
        MultipleChoiceTask::new(encode(&train_rows), encode(&eval_rows), 8, pad, 3, &device)
            .unwrap();
    let tc = TrainerConfig::new(Duration::batches(1), OptimizerConfig::adamw(1e-3, 0.0));
    let e = match Trainer::new(tc, dir.path().join("small")).fit(
        small,
        &mut task,
        &mut Vec::new(),
        &device,
    ) {
        Ok(_) => panic!("a model without the added tokens was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("resize the embeddings"), "{e}");
}
