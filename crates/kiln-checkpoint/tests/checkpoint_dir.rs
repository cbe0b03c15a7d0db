//! Model directories: sharded round trips and every way an index can be wrong.

use std::path::Path;

use kiln_checkpoint::{
    Checkpoint, CheckpointWriter, Dtype, Error, INDEX_FILE, ShardPlan, TensorSpec, dtype,
};

fn write_model(out: &Path, max_shard: u64) -> Vec<(String, Vec<f32>)> {
    let tensors: Vec<(String, Vec<usize>)> = vec![
        ("embed.weight".into(), vec![7, 3]),
        ("layers.0.w".into(), vec![3, 5]),
        ("layers.0.b".into(), vec![5]),
        ("layers.1.w".into(), vec![3, 5]),
        ("head.weight".into(), vec![5, 7]),
    ];
    let specs = tensors
        .iter()
        .map(|(n, s)| TensorSpec {
            name: n.clone(),
            dtype: Dtype::BF16,
            shape: s.clone(),
        })
        .collect();
    let plan = ShardPlan::new(specs, max_shard).unwrap();
    let mut w = CheckpointWriter::create(out, plan, Default::default(), false).unwrap();
    let mut values = Vec::new();
    for (k, (name, shape)) in tensors.iter().enumerate() {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| (i as f32 - 3.0) * 0.25 + k as f32).collect();
        let mut bytes = vec![0u8; n * 2];
        dtype::encode_f32(&v, Dtype::BF16, &mut bytes).unwrap();
        w.write_tensor(name, &bytes).unwrap();
        values.push((name.clone(), v));
    }
    w.write_file("config.json", br#"{"num_hidden_layers": 2}"#)
        .unwrap();
    w.finish().unwrap();
    values
}

#[test]
fn sharded_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let values = write_model(&out, 64);
    assert!(out.join(INDEX_FILE).exists());
    assert!(out.join("model-00001-of-00004.safetensors").exists());
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(INDEX_FILE)).unwrap()).unwrap();
    assert_eq!(index["metadata"]["total_size"], (21 + 15 + 5 + 15 + 35) * 2);
    let c = Checkpoint::open(&out).unwrap();
    assert_eq!(
        c.names().collect::<Vec<_>>(),
        values.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>()
    );
    for (name, v) in &values {
        assert_eq!(&c.tensor(name).unwrap().to_f32().unwrap(), v, "{name}");
        c.release(name);
    }
    assert_eq!(c.config().unwrap().num_hidden_layers().unwrap(), Some(2));
    assert_eq!(c.metadata()["format"], "pt");
    let err = c.tensor("weight").unwrap_err();
    assert!(matches!(err, Error::TensorNotFound { .. }));
    let err = c.tensor("model.layers.0.w").unwrap_err().to_string();
    assert!(err.contains("did you mean `layers.0.w`"), "{err}");
}

#[test]
fn single_shard_needs_no_index() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    write_model(&out, u64::MAX);
    assert!(out.join("model.safetensors").exists() && !out.join(INDEX_FILE).exists());
    assert_eq!(Checkpoint::open(&out).unwrap().len(), 5);
    assert_eq!(
        Checkpoint::open(out.join("model.safetensors"))
            .unwrap()
            .len(),
        5
    );
}

fn rewrite_index(out: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = out.join(INDEX_FILE);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn bad_indexes_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    write_model(&out, 64);

    rewrite_index(&out, |v| {
        v["weight_map"]["extra"] = "model-00009-of-00009.safetensors".into()
    });
    assert!(matches!(
        Checkpoint::open(&out),
        Err(Error::MissingShard { .. })
    ));

    rewrite_index(&out, |v| {
        v["weight_map"].as_object_mut().unwrap().remove("extra");
        v["weight_map"]["layers.0.b"] = "model-00004-of-00004.safetensors".into();
    });
    let err = Checkpoint::open(&out).unwrap_err();
    assert!(matches!(err, Error::TensorNotInShard { .. }), "{err}");

    rewrite_index(&out, |v| v["weight_map"] = serde_json::json!([]));
    assert!(matches!(Checkpoint::open(&out), Err(Error::Index { .. })));

    rewrite_index(&out, |v| {
        v["weight_map"] = serde_json::json!({"a": "../../etc/passwd"})
    });
    assert!(matches!(Checkpoint::open(&out), Err(Error::Index { .. })));

    std::fs::write(out.join(INDEX_FILE), "{").unwrap();
    assert!(matches!(Checkpoint::open(&out), Err(Error::Index { .. })));
}

#[test]
fn duplicate_names_across_shards_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    write_model(&out, 64);
    // Shard 2 gets a copy of shard 1's file: every name of shard 1 now appears twice.
    std::fs::copy(
        out.join("model-00001-of-00004.safetensors"),
        out.join("model-00002-of-00004.safetensors"),
    )
    .unwrap();
    let err = Checkpoint::open(&out).unwrap_err();
    assert!(matches!(err, Error::DuplicateTensor { .. }), "{err}");
}

#[test]
fn truncated_shards_and_empty_dirs_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    write_model(&out, 64);
    let shard = out.join("model-00002-of-00004.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 3]).unwrap();
    let err = Checkpoint::open(&out).unwrap_err();
    assert!(matches!(err, Error::OutOfBounds { .. }), "{err}");
    assert!(
        err.to_string().contains("model-00002-of-00004.safetensors"),
        "{err}"
    );

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(matches!(
        Checkpoint::open(&empty),
        Err(Error::NoWeights { .. })
    ));
}

/// A weights file that is a FIFO, a symlink loop or a dangling link is reported as what it is,
/// not as "no safetensors weights" (and a FIFO is never opened, which would block).
#[cfg(unix)]
#[test]
fn special_files_are_named_for_what_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("fifo", "FIFO"),
        ("loop", "symlink"),
        ("dangling", "does not exist"),
    ];
    for (case, want) in cases {
        let m = dir.path().join(case);
        std::fs::create_dir(&m).unwrap();
        let weights = m.join("model.safetensors");
        match case {
            "fifo" => {
                let ok = std::process::Command::new("mkfifo")
                    .arg(&weights)
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    continue; // no mkfifo on this system
                }
            }
            "loop" => std::os::unix::fs::symlink(&weights, &weights).unwrap(),
            _ => std::os::unix::fs::symlink(m.join("gone"), &weights).unwrap(),
        }
        for path in [m.clone(), weights.clone()] {
            let err = Checkpoint::open(&path).unwrap_err();
            assert!(
                matches!(err, Error::NotARegularFile { .. }) && err.to_string().contains(want),
                "{case} via {}: {err}",
                path.display()
            );
        }
    }
}
