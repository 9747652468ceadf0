//! Loading rule files from directories: symlinks, hidden files, ConfigMap mounts, duplicates.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use tempfile::TempDir;

use crate::rule::*;

const STAMPED: &str = "..2026_11_26_10_00_00.123456789";

fn pack_rule(name: &str) -> &'static str {
    let (_, text) = crate::pack::FILES
        .iter()
        .find(|(n, _)| *n == name)
        .expect("in the pack");
    text
}

fn minimal_rule(id: &str) -> String {
    format!("id: {id}\ntitle: T\nseverity: low\nkind: detection\ndetection:\n  where: decision = 'deny_rbac'\n")
}

/// Lays `files` out as the kubelet mounts a ConfigMap: the files in a timestamped hidden
/// directory, `..data` linking to it, and a top-level link per file through `..data`.
fn configmap_mount(dir: &Path, files: &[(&str, &str)]) {
    fs::create_dir(dir.join(STAMPED)).expect("test fixture");
    for (name, text) in files {
        fs::write(dir.join(STAMPED).join(name), text).expect("test fixture");
        symlink(Path::new("..data").join(name), dir.join(name)).expect("test fixture");
    }
    symlink(STAMPED, dir.join("..data")).expect("test fixture");
}

fn load_dir(dir: &Path) -> Vec<RuleSource> {
    load_paths(&[dir.to_path_buf()]).expect("loads")
}

fn ids(sources: &[RuleSource]) -> Vec<&str> {
    sources.iter().map(|s| s.rule.id.as_str()).collect()
}

#[test]
fn configmap_mount_loads_each_rule_once() {
    let dir = TempDir::new().expect("test fixture");
    configmap_mount(
        dir.path(),
        &[
            ("zt-weak-tls.yaml", pack_rule("zt-weak-tls.yaml")),
            ("zt-log4shell.yaml", pack_rule("zt-log4shell.yaml")),
        ],
    );
    let sources = load_dir(dir.path());
    assert_eq!(ids(&sources), ["zt-log4shell", "zt-weak-tls"]);
    assert_eq!(sources[0].path, dir.path().join("zt-log4shell.yaml"));
    assert_eq!(sources[1].path, dir.path().join("zt-weak-tls.yaml"));
}

#[test]
fn symlinks_out_of_the_directory_are_not_followed() {
    let dir = TempDir::new().expect("test fixture");
    let elsewhere = TempDir::new().expect("test fixture");
    fs::write(dir.path().join("inside.yaml"), minimal_rule("inside")).expect("test fixture");
    fs::write(elsewhere.path().join("outside.yaml"), minimal_rule("outside")).expect("test fixture");
    fs::create_dir(elsewhere.path().join("more")).expect("test fixture");
    fs::write(elsewhere.path().join("more/beyond.yaml"), minimal_rule("beyond")).expect("test fixture");
    symlink(elsewhere.path().join("outside.yaml"), dir.path().join("outside.yaml")).expect("test fixture");
    symlink(elsewhere.path().join("more"), dir.path().join("more")).expect("test fixture");
    assert_eq!(ids(&load_dir(dir.path())), ["inside"]);
}

#[test]
fn symlinked_directories_are_not_descended_into() {
    let dir = TempDir::new().expect("test fixture");
    fs::write(dir.path().join("a.yaml"), minimal_rule("a")).expect("test fixture");
    symlink(".", dir.path().join("loop")).expect("test fixture");
    assert_eq!(ids(&load_dir(dir.path())), ["a"]);
}

#[test]
fn hidden_files_are_not_loaded() {
    let dir = TempDir::new().expect("test fixture");
    fs::write(dir.path().join("a.yaml"), minimal_rule("a")).expect("test fixture");
    fs::write(dir.path().join(".x.yaml"), minimal_rule("x")).expect("test fixture");
    assert_eq!(ids(&load_dir(dir.path())), ["a"]);
}

#[test]
fn same_id_in_two_files_is_a_duplicate() {
    let dir = TempDir::new().expect("test fixture");
    fs::write(dir.path().join("a.yaml"), minimal_rule("same")).expect("test fixture");
    fs::write(dir.path().join("b.yaml"), minimal_rule("same")).expect("test fixture");
    let errors = load_paths(&[dir.path().to_path_buf()]).expect_err("duplicate id");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].to_string().contains("duplicate rule id same"),
        "{}",
        errors[0]
    );
}
