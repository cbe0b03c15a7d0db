//! `kiln merge` end to end: parity through the binary, dry runs, refusals, and a crash mid-merge.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kiln_checkpoint::Checkpoint;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kiln-merging/tests/fixtures")
}

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn merges_like_mergekit_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ties");
    let cfg = fixtures().join("configs/ties.yml");
    let o = kiln(&[
        "merge",
        s(&cfg),
        s(&out),
        "--out-shard-size",
        "10kB",
        "--threads",
        "2",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("merged 40 tensors"));
    let got = Checkpoint::open(&out).unwrap();
    assert!(got.files().len() > 1, "10 kB shards give several files");
    let want = Checkpoint::open(fixtures().join("expected/ties.safetensors")).unwrap();
    for name in want.names() {
        let (a, b) = (
            got.tensor(name).unwrap().to_f32().unwrap(),
            want.tensor(name).unwrap().to_f32().unwrap(),
        );
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= 1e-6, "{name}: {worst}");
    }
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let o = kiln(&[
        "merge",
        s(&fixtures().join("configs/slerp.yml")),
        s(&out),
        "--dry-run",
        "--out-shard-size",
        "20kB",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    for needle in [
        "merge_method: slerp",
        "40 merged",
        "model-00001-of-",
        "memory:",
    ] {
        assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
    }
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn bad_configs_and_existing_outputs_are_refused_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.yml");
    std::fs::write(
        &cfg,
        "models: [{model: x}]\nmerge_method: ties\nbase_model: y\nnormalise: true\n",
    )
    .unwrap();
    let o = kiln(&["merge", s(&cfg), s(&dir.path().join("o"))]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("normalise") && err.contains("merge_method"),
        "{err}"
    );

    std::fs::write(&cfg, "models: [{model: x}]\nmerge_method: frankenmerge\n").unwrap();
    let err = String::from_utf8_lossy(&kiln(&["merge", s(&cfg), s(&dir.path().join("o"))]).stderr)
        .to_string();
    assert!(
        err.contains("frankenmerge") && err.contains("slerp"),
        "{err}"
    );

    let out = dir.path().join("exists");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "precious").unwrap();
    let o = kiln(&["merge", s(&fixtures().join("configs/linear.yml")), s(&out)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "precious"
    );
    let o = kiln(&[
        "merge",
        s(&fixtures().join("configs/linear.yml")),
        s(&out),
        "--force",
    ]);
    assert!(o.status.success());
    assert!(!out.join("keep.txt").exists() && out.join("model.safetensors").exists());

    // Writing into an input is refused.
    let o = kiln(&[
        "merge",
        s(&fixtures().join("configs/linear.yml")),
        s(&fixtures().join("models/ft_a")),
        "--force",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is model `../models/ft_a`"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let o = kiln(&[
        "merge",
        s(&fixtures().join("configs/linear.yml")),
        s(&dir.path().join("z")),
        "--out-shard-size",
        "big",
    ]);
    assert_eq!(o.status.code(), Some(2));
}

/// A merge killed mid-way (SIGKILL, no cleanup) leaves no output directory; the next run removes
/// the dead run's staging directory and succeeds.
#[test]
fn a_killed_merge_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "merge",
            s(&fixtures().join("configs/ties.yml")),
            s(&out),
            "--out-shard-size",
            "10kB",
        ])
        .env("KILN_MERGE_TEST_PAUSE_AFTER", "12")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut paused = false;
    for line in stderr.lines() {
        if line.unwrap().contains("paused after 12 tensors") {
            paused = true;
            break;
        }
    }
    assert!(paused, "the merge reached the pause point");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "no output directory after a crash");
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        leftovers.iter().all(|n| n.starts_with(".merged.kiln-tmp-")),
        "{leftovers:?}"
    );

    let o = kiln(&["merge", s(&fixtures().join("configs/ties.yml")), s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        after,
        vec!["merged".to_owned()],
        "the stale staging directory was removed"
    );
}

#[test]
fn merge_help_explains_units_and_defaults() {
    let help = String::from_utf8(kiln(&["merge", "--help"]).stdout).unwrap();
    for needle in [
        "[default: 5GB]",
        "in bytes",
        "--dry-run",
        "--force",
        "mergekit",
    ] {
        assert!(help.contains(needle), "`{needle}` not in:\n{help}");
    }
}

/// Copies of the fixture models under `<tmp>/models/` and a linear config naming them by absolute
/// path, so tests can point outputs at and around them.
fn workspace() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    for m in ["base", "ft_a", "ft_b"] {
        let to = root.join("models").join(m);
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(fixtures().join("models").join(m)).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
    }
    let cfg = root.join("linear.yml");
    write_config(&cfg, &root.join("models"));
    (dir, root, cfg)
}

fn write_config(cfg: &Path, models: &Path) {
    std::fs::write(
        cfg,
        format!(
            "models:\n  - model: {0}/base\n    parameters: {{weight: 0.3}}\n  - model: {0}/ft_a\n    parameters: {{weight: 0.7}}\nmerge_method: linear\ntokenizer_source: {0}/base\n",
            models.display()
        ),
    )
    .unwrap();
}

/// Every file under `dir` with its bytes, to show nothing changed.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Review finding: `kiln merge CFG ./models --force` with inputs under ./models moved ./models
/// aside and deleted it after the merge — the inputs with it. Every overlap is refused, in every
/// direction, through `./`, `..` and symlinks, with or without --force, naming both paths.
#[test]
fn outputs_that_are_inside_or_around_an_input_are_refused() {
    let (_dir, root, cfg) = workspace();
    #[cfg(unix)]
    std::os::unix::fs::symlink(root.join("models"), root.join("link")).unwrap();
    let linked_cfg = root.join("linked.yml");
    write_config(&linked_cfg, &root.join("link"));
    let before = snapshot(&root.join("models"));
    let cases: Vec<(&Path, PathBuf, &str)> = vec![
        (&cfg, root.join("models"), "contains model"),
        (&cfg, root.join("./models/../models"), "contains model"),
        (&cfg, root.join("models/ft_a"), "is model"),
        (&cfg, root.join("models/ft_a/merged"), "lies inside model"),
        (
            &cfg,
            root.join("./models/ft_a/model.safetensors"),
            "lies inside model",
        ),
        (&cfg, root.clone(), "contains"),
        (&cfg, cfg.clone(), "is the merge config"),
        #[cfg(unix)]
        (&linked_cfg, root.join("models"), "contains model"),
        #[cfg(unix)]
        (&cfg, root.join("link/ft_a"), "is model"),
        #[cfg(unix)]
        (&linked_cfg, root.join("models/base/x"), "lies inside model"),
    ];
    for (config, out, want) in &cases {
        for force in [true, false] {
            let mut args = vec!["merge", s(config), s(out)];
            if force {
                args.push("--force");
            }
            let o = kiln(&args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{out:?} force {force}: {err}");
            assert!(
                err.contains(want) && err.contains("resolved"),
                "{out:?}: `{want}` not in {err}"
            );
        }
    }
    assert!(snapshot(&root.join("models")) == before, "inputs untouched");
    let o = kiln(&["merge", s(&cfg), s(&root.join("merged"))]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Waits until a child prints `needle` on stderr.
fn wait_for(child: &mut std::process::Child, needle: &str) {
    let stderr = BufReader::new(child.stderr.take().unwrap());
    for line in stderr.lines() {
        if line.unwrap().contains(needle) {
            return;
        }
    }
    panic!("the child never printed `{needle}`");
}

fn spawn_merge(cfg: &Path, out: &Path, pause: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["merge", s(cfg), s(out), "--force"])
        .env(kiln_checkpoint::TEST_PAUSE_VAR, pause)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// Review finding: with --force, a crash between moving the old output aside and renaming the new
/// one in left no output, and the old one in `.OUT.kiln-old-PID` forever. Killed (SIGKILL, no
/// cleanup) at each point of the replacement, the next run for that output repairs it.
#[test]
fn a_replacement_killed_at_any_point_is_repaired_by_the_next_run() {
    let (_dir, root, cfg) = workspace();
    let out = root.join("merged");
    for point in ["atomic-staged", "atomic-aside", "atomic-replaced"] {
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("old.txt"), "the previous merge").unwrap();
        let mut child = spawn_merge(&cfg, &out, point);
        wait_for(&mut child, &format!("paused at {point}"));
        child.kill().unwrap();
        child.wait().unwrap();
        let old_kept = out.join("old.txt").exists();
        match point {
            "atomic-staged" => assert!(old_kept, "the old output is untouched before the renames"),
            "atomic-aside" => assert!(!out.exists(), "the crash left no output"),
            _ => assert!(out.join("model.safetensors").exists() && !old_kept),
        }
        // Without --force the next run repairs, then refuses to replace.
        let o = kiln(&["merge", s(&cfg), s(&out)]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{point}: {err}");
        assert!(err.contains("already exists"), "{point}: {err}");
        match point {
            "atomic-aside" => {
                assert!(err.contains("previous version was restored"), "{err}");
                assert_eq!(
                    std::fs::read_to_string(out.join("old.txt")).unwrap(),
                    "the previous merge"
                );
            }
            "atomic-replaced" => assert!(err.contains("was removed"), "{err}"),
            _ => {}
        }
        let o = kiln(&["merge", s(&cfg), s(&out), "--force"]);
        assert!(
            o.status.success(),
            "{point}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            names(&root),
            ["linear.yml", "merged", "models"],
            "{point}: nothing left beside the output"
        );
    }
}

/// Review finding: Ctrl-C or SIGTERM left `.OUT.kiln-tmp-PID-0` behind until a later merge to the
/// same name. Interrupted while staging or between the renames, the process removes its staging
/// directory and puts the old output back before it exits.
#[cfg(unix)]
#[test]
fn sigint_and_sigterm_clean_up_and_restore() {
    let (_dir, root, cfg) = workspace();
    let out = root.join("merged");
    for (point, signal) in [
        ("atomic-staged", "TERM"),
        ("atomic-aside", "INT"),
        ("atomic-staged", "INT"),
        ("atomic-aside", "TERM"),
    ] {
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("old.txt"), "the previous merge").unwrap();
        let mut child = spawn_merge(&cfg, &out, point);
        wait_for(&mut child, &format!("paused at {point}"));
        let killed = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(130), "{point} {signal}");
        assert_eq!(
            std::fs::read_to_string(out.join("old.txt")).unwrap(),
            "the previous merge",
            "{point} {signal}"
        );
        assert_eq!(
            names(&root),
            ["linear.yml", "merged", "models"],
            "{point} {signal}"
        );
    }
}

/// Two tiny models without config.json: `w` near f32's largest value, so their sum overflows.
fn huge_models(root: &Path) -> PathBuf {
    for (m, v) in [("a", 3e38f32), ("b", 2e38f32)] {
        let d = root.join(m);
        std::fs::create_dir_all(&d).unwrap();
        let w: Vec<u8> = [v, 1.0, 2.0, 3.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let ok: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        kiln_checkpoint::write_file(
            &d.join("model.safetensors"),
            &[
                ("w", kiln_checkpoint::Dtype::F32, &[4], &w),
                ("ok", kiln_checkpoint::Dtype::F32, &[2], &ok),
            ],
            &Default::default(),
        )
        .unwrap();
    }
    let cfg = root.join("sum.yml");
    std::fs::write(
        &cfg,
        format!(
            "models:\n  - model: {0}/a\n    parameters: {{weight: 1.0}}\n  - model: {0}/b\n    parameters: {{weight: 1.0}}\nmerge_method: linear\nparameters: {{normalize: false}}\ntokenizer_source: {0}/a\n",
            root.display()
        ),
    )
    .unwrap();
    cfg
}

/// Review findings: a merge whose output holds ±∞ for finite inputs exited 0; weights that sum to
/// zero were silently not normalised; a base without config.json or a tokenizer source without
/// tokenizer files was mentioned only in the model card.
#[test]
fn degenerate_merges_are_refused_or_reported_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = huge_models(dir.path());
    let out = dir.path().join("out");
    let o = kiln(&["merge", s(&cfg), s(&out)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("`w`") && !err.contains("`ok`") && err.contains("--allow-non-finite"),
        "{err}"
    );
    assert!(err.contains("no config.json"), "{err}");
    assert!(err.contains("no tokenizer"), "{err}");
    assert!(!out.exists());
    assert_eq!(names(dir.path()), ["a", "b", "sum.yml"]);

    let o = kiln(&["merge", s(&cfg), s(&out), "--allow-non-finite"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("`w` holds 1 NaN or infinite value"), "{err}");
    let w = Checkpoint::open(&out)
        .unwrap()
        .tensor("w")
        .unwrap()
        .to_f32()
        .unwrap();
    assert!(w[0].is_infinite() && w[1] == 2.0);

    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("weight: 1.0}\n  - model", "weight: -1.0}\n  - model")
        .replace("normalize: false", "normalize: true");
    std::fs::write(&cfg, text).unwrap();
    let o = kiln(&[
        "merge",
        s(&cfg),
        s(&dir.path().join("zero")),
        "--allow-non-finite",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("sum to zero") && err.contains("`w`"), "{err}");
}
