//! Teachers for kiln-models' classifiers: a BERT sequence classifier answering from the batch's
//! tokens and an image classifier answering by example id give exactly the teacher model's own
//! evaluation-mode logits for the student's rows; a run distils with them; a teacher with another
//! number of classes is refused by name.

use std::sync::Arc;

use kiln_data::images::ImageSet;
use kiln_distill::burn::module::Module;
use kiln_distill::burn::tensor::Device;
use kiln_distill::classifiers::{BertClassifierTeacher, ImageTeacher};
use kiln_distill::{Distill, Divergence, KdLoss, Teacher, Window};
use kiln_models::bert::{BertConfig, BertForSequenceClassification};
use kiln_models::vision::{ImageClassifier, ImageShape, MlpConfig, VisionConfig};
use kiln_schedules::Duration;
use kiln_train::tasks::{
    ClassificationTask, ImageClassificationTask, LabelledSequence, image_batch,
};
use kiln_train::{Algorithm, OptimizerConfig, TrainTask, Trainer, TrainerConfig};

/// burn's generator is per process and the trainer reseeds it: these tests run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn bert(seed: u64, labels: usize, d: &Device) -> BertForSequenceClassification {
    d.seed(seed);
    let config = BertConfig {
        vocab_size: 20,
        hidden_size: 8,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 16,
        max_position_embeddings: 8,
        ..BertConfig::bert_base()
    };
    BertForSequenceClassification::from_encoder(config.init(d).unwrap(), labels, d).unwrap()
}

fn max_diff(a: Vec<f32>, b: Vec<f32>) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn host(t: kiln_distill::burn::tensor::Tensor<2>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[test]
fn a_bert_teacher_answers_with_its_own_logits() {
    let _serial = serial();
    let d = Device::flex().autodiff();
    let seqs: Vec<LabelledSequence> = (0..6u32)
        .map(|i| LabelledSequence {
            ids: (0..(3 + i % 3)).map(|t| (t * 3 + i) % 20).collect(),
            label: i % 2,
        })
        .collect();
    let mut task = ClassificationTask::new(seqs.clone(), seqs[..2].to_vec(), 4, 0, 0, &d).unwrap();
    let (student, teacher) = (bert(1, 2, &d), bert(2, 2, &d));
    let (batch, _) = task.next_batch(&Default::default(), 0, 1).unwrap();
    let out = task.forward(&student, batch).unwrap();
    let mut t = BertClassifierTeacher::new(teacher.clone());
    let got = t.logits(&out, &d, 0).unwrap();
    let inputs = out.inputs.clone().unwrap();
    let want = teacher.valid().forward(
        inputs.input_ids.inner(),
        None,
        inputs.attention_mask.map(|m| m.inner()),
    );
    assert!(max_diff(host(got), host(want)) < 1e-6);
    // a three-class teacher for a two-class student
    let e = BertClassifierTeacher::new(bert(3, 3, &d))
        .logits(&out, &d, 0)
        .unwrap_err();
    assert!(e.contains("3 classes") && e.contains("student 2"), "{e}");
}

fn mlp(seed: u64, classes: usize, d: &Device) -> ImageClassifier {
    d.seed(seed);
    let config = VisionConfig::Mlp(MlpConfig {
        input: ImageShape {
            channels: 1,
            height: 8,
            width: 8,
        },
        hidden: vec![16],
        classes,
    });
    ImageClassifier::init(&config, d).unwrap()
}

#[test]
fn an_image_teacher_answers_by_example_id_and_a_run_distils_from_it() {
    let _serial = serial();
    let d = Device::flex().autodiff();
    let set = Arc::new(ImageSet::digits().unwrap());
    let (train, test) = set.split(0.5, 0);
    let mut task =
        ImageClassificationTask::new(set.clone(), train.clone(), test.clone(), 8, 0, &d).unwrap();
    let (student, teacher) = (mlp(1, 10, &d), mlp(2, 10, &d));
    let (batch, _) = task.next_batch(&Default::default(), 0, 1).unwrap();
    let ids = batch.clone();
    let out = task.forward(&student, batch).unwrap();
    let mut t = ImageTeacher::new(teacher.clone(), set.clone());
    let got = t.logits(&out, &d, 0).unwrap();
    let flex = Device::flex();
    let want = teacher
        .valid()
        .forward(image_batch(&set, &ids, &flex).0)
        .unwrap();
    assert!(max_diff(host(got), host(want)) < 1e-6);
    let e = ImageTeacher::new(mlp(3, 12, &d), set.clone())
        .logits(&out, &d, 0)
        .unwrap_err();
    assert!(e.contains("12 classes") && e.contains("student 10"), "{e}");
    // a short run distils (the KD term is logged every step)
    let kd = KdLoss {
        ce_weight: 0.5,
        kd_weight: 0.5,
        temperature: 2.0,
        divergence: Divergence::ForwardKl,
    };
    let mut algorithms: Vec<Box<dyn Algorithm<ImageClassifier>>> = vec![Box::new(
        Distill::new(
            kd,
            Box::new(ImageTeacher::new(teacher, set)),
            Window::always(),
        )
        .unwrap(),
    )];
    let mut tc = TrainerConfig::new(Duration::batches(5), OptimizerConfig::adamw(1e-3, 0.0));
    tc.progress_bar = false;
    let dir = tempfile::tempdir().unwrap();
    Trainer::new(tc, dir.path())
        .fit(student, &mut task, &mut algorithms, &d)
        .unwrap();
    let log = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(log.matches("\"kd_loss\"").count(), 5);
}
