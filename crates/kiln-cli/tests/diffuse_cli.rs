//! `kiln run diffuse` on the tiny Stable Diffusion pipeline kiln-models' fixture script saved
//! with diffusers: from the embeddings and initial latents StableDiffusionPipeline was given,
//! the written latents equal its final latents and the PNG its decoded image; inputs that
//! cannot work are refused with what to do.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln_checkpoint::{Checkpoint, Dtype};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kiln-models/tests/fixtures")
}

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln")
}

/// Copies tensor `from` of the reference file into its own safetensors file as `to`.
fn extract(r: &Checkpoint, from: &str, to: &str, path: &Path) {
    let t = r.tensor(from).unwrap();
    let v = t.to_f32().unwrap();
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    kiln_checkpoint::write_file(
        path,
        &[(to, Dtype::F32, t.shape(), &bytes)],
        &Default::default(),
    )
    .unwrap();
}

#[test]
fn diffuse_from_embeddings_equals_diffusers_and_writes_a_png() {
    let tmp = tempfile::tempdir().unwrap();
    let r = Checkpoint::open(fixtures().join("reference/sd_tiny.safetensors")).unwrap();
    let (p, n, l) = (
        tmp.path().join("p.safetensors"),
        tmp.path().join("n.safetensors"),
        tmp.path().join("l.safetensors"),
    );
    extract(&r, "prompt_embeds", "prompt_embeds", &p);
    extract(&r, "negative_embeds", "negative_embeds", &n);
    extract(&r, "init_latents", "latents", &l);
    let (out, png) = (
        tmp.path().join("out.safetensors"),
        tmp.path().join("img.png"),
    );
    let model = fixtures().join("models/sd_tiny");
    let o = kiln(&[
        "run",
        "diffuse",
        "--model",
        model.to_str().unwrap(),
        "--prompt-embeds",
        p.to_str().unwrap(),
        "--negative-embeds",
        n.to_str().unwrap(),
        "--init-latents",
        l.to_str().unwrap(),
        "--steps",
        "5",
        "--guidance",
        "7.5",
        "--output-latents",
        out.to_str().unwrap(),
        "--output",
        png.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    same_within(
        &latents(&out),
        &r.tensor("ddim").unwrap().to_f32().unwrap(),
        1e-4,
        "latents",
    );
    // the PNG is diffusers' image in [0, 1], as 8-bit RGB
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (16, 16));
    let image = r.tensor("image").unwrap().to_f32().unwrap(); // [1, 3, 16, 16]
    for y in 0..16 {
        for x in 0..16 {
            for c in 0..3 {
                let want = (image[(c * 16 + y) * 16 + x] * 255.0).round();
                let got = f32::from(buf[(y * 16 + x) * 3 + c]);
                assert!(
                    (got - want).abs() <= 1.0,
                    "pixel ({x}, {y}) channel {c}: {got} vs {want}"
                );
            }
        }
    }
}

/// `kiln run diffuse --prompt` on `model` from the reference's `init_latents` (5 DDIM steps,
/// guidance 7.5, the empty negative prompt) gives the reference's `prompt_ddim` to 1e-4.
fn prompt_run_equals(model: &Path, prompt: &str, reference: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let r = Checkpoint::open(fixtures().join(reference)).unwrap();
    let l = tmp.path().join("l.safetensors");
    extract(&r, "init_latents", "latents", &l);
    let out = tmp.path().join("out.safetensors");
    // the tokenizer pads to the text encoder's length with the pipeline's pad token, the
    // negative prompt defaults to "", guidance to 7.5 and the scheduler to the pipeline's DDIM
    let o = kiln(&[
        "run",
        "diffuse",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        prompt,
        "--init-latents",
        l.to_str().unwrap(),
        "--steps",
        "5",
        "--output-latents",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = r.tensor("prompt_ddim").unwrap().to_f32().unwrap();
    same_within(&latents(&out), &want, 1e-4, "latents");
}

#[test]
fn diffuse_from_a_prompt_equals_diffusers() {
    let model = fixtures().join("models/sd_tiny");
    prompt_run_equals(&model, "w5 w9 w12 w40", "reference/sd_tiny.safetensors");
}

#[test]
fn diffuse_with_a_clip_bpe_tokenizer_from_vocab_and_merges_equals_diffusers() {
    // sd_tiny with tokenizer/ as SD 2 pipelines ship it: vocab.json + merges.txt, no
    // tokenizer.json (make_clip_bpe_fixture.py ran diffusers on the same layout)
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("sd_bpe");
    copy_dir(&fixtures().join("models/sd_tiny"), &model, "tokenizer");
    copy_dir(
        &fixtures().join("models/clip_bpe_tokenizer"),
        &model.join("tokenizer"),
        "",
    );
    prompt_run_equals(
        &model,
        "A Red circle at the left, 2 of them.",
        "reference/sd_tiny_bpe.safetensors",
    );
}

fn copy_dir(from: &Path, to: &Path, skip: &str) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name == skip {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(&name), skip);
        } else {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

#[test]
fn diffuse_refuses_what_cannot_work() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("models/sd_tiny");
    let png = tmp.path().join("img.png");
    // a prompt needs a tokenizer: a copy of the pipeline without its tokenizer
    let bare = tmp.path().join("bare");
    copy_dir(&model, &bare, "tokenizer");
    let o = kiln(&[
        "run",
        "diffuse",
        "--model",
        bare.to_str().unwrap(),
        "--prompt",
        "w5",
        "--steps",
        "2",
        "--output",
        png.to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("vocab.json + merges.txt"),
        "{e}"
    );
    // guidance without negative embeddings
    let r = Checkpoint::open(fixtures().join("reference/sd_tiny.safetensors")).unwrap();
    let p = tmp.path().join("p.safetensors");
    extract(&r, "prompt_embeds", "prompt_embeds", &p);
    let o = kiln(&[
        "run",
        "diffuse",
        "--model",
        model.to_str().unwrap(),
        "--prompt-embeds",
        p.to_str().unwrap(),
        "--steps",
        "2",
        "--output",
        png.to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("--negative-embeds"),
        "{e}"
    );
    assert!(!png.exists(), "nothing written on failure");
    // not a pipeline directory; and no output inside the model
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for (out, expect) in [
        (png.clone(), "model_index.json"),
        (empty.join("img.png"), "never writes onto, inside"),
    ] {
        let o = kiln(&[
            "run",
            "diffuse",
            "--model",
            empty.to_str().unwrap(),
            "--prompt-embeds",
            p.to_str().unwrap(),
            "--guidance",
            "1",
            "--output",
            out.to_str().unwrap(),
        ]);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains(expect), "{e}");
    }
    // unguided, seeded noise: runs, and the same seed gives the same image
    let run = |out: &Path| {
        let o = kiln(&[
            "run",
            "diffuse",
            "--model",
            model.to_str().unwrap(),
            "--prompt-embeds",
            p.to_str().unwrap(),
            "--guidance",
            "1",
            "--steps",
            "3",
            "--seed",
            "7",
            "--scheduler",
            "euler",
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(out).unwrap()
    };
    assert_eq!(
        run(&tmp.path().join("a.png")),
        run(&tmp.path().join("b.png"))
    );
}

/// Copies tensors of the reference file into one safetensors file under new names.
fn extract_many(r: &Checkpoint, names: &[(&str, &str)], path: &Path) {
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = names
        .iter()
        .map(|(from, to)| {
            let t = r.tensor(from).unwrap();
            let b: Vec<u8> = t
                .to_f32()
                .unwrap()
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            ((*to).to_owned(), t.shape().to_vec(), b)
        })
        .collect();
    let view: Vec<(&str, Dtype, &[usize], &[u8])> = tensors
        .iter()
        .map(|(n, s, b)| (n.as_str(), Dtype::F32, s.as_slice(), b.as_slice()))
        .collect();
    kiln_checkpoint::write_file(path, &view, &Default::default()).unwrap();
}

#[track_caller]
fn same(got: &[f32], want: &[f32], what: &str) {
    same_within(got, want, 1e-5, what);
}

/// `got` equals `want` to `tol` × the larger of 1e-3 and `want`'s largest |value|.
fn same_within(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(worst <= tol * scale, "{what} differ by {worst:e}");
}

/// The `latents` tensor `kiln run diffuse --output-latents` wrote.
fn latents(path: &Path) -> Vec<f32> {
    Checkpoint::open(path)
        .unwrap()
        .tensor("latents")
        .unwrap()
        .to_f32()
        .unwrap()
}

#[test]
fn forward_runs_a_unet_and_a_vae_as_diffusers() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |model: &str, inputs: &Path, extra: &[&str]| {
        let out = tmp.path().join(format!("{model}-out.safetensors"));
        let dir = fixtures().join("models").join(model);
        let mut args = vec![
            "run",
            "forward",
            "--model",
            dir.to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = kiln(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Checkpoint::open(&out).unwrap()
    };
    let r = Checkpoint::open(fixtures().join("reference/unet_tiny.safetensors")).unwrap();
    let inputs = tmp.path().join("unet-in.safetensors");
    extract_many(
        &r,
        &[
            ("sample", "sample"),
            ("timestep_each", "timestep"),
            ("encoder_hidden_states", "encoder_hidden_states"),
        ],
        &inputs,
    );
    let out = run("unet_tiny", &inputs, &[]);
    same(
        &out.tensor("sample").unwrap().to_f32().unwrap(),
        &r.tensor("out_each").unwrap().to_f32().unwrap(),
        "UNet sample",
    );
    let r = Checkpoint::open(fixtures().join("reference/vae_tiny.safetensors")).unwrap();
    let latents = tmp.path().join("vae-in.safetensors");
    extract_many(&r, &[("latents", "sample")], &latents);
    let out = run("vae_tiny", &latents, &[]);
    same(
        &out.tensor("sample").unwrap().to_f32().unwrap(),
        &r.tensor("decoded").unwrap().to_f32().unwrap(),
        "VAE decode",
    );
    let image = tmp.path().join("vae-image.safetensors");
    extract_many(&r, &[("image", "sample")], &image);
    let out = run("vae_tiny", &image, &["--encode"]);
    same(
        &out.tensor("mean").unwrap().to_f32().unwrap(),
        &r.tensor("mean").unwrap().to_f32().unwrap(),
        "VAE mean",
    );
    // a directory that is neither
    let o = kiln(&[
        "run",
        "forward",
        "--model",
        fixtures().join("models/clip_text_gelu").to_str().unwrap(),
        "--inputs",
        image.to_str().unwrap(),
        "--output",
        tmp.path().join("x.safetensors").to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("_class_name"), "{e}");
}
