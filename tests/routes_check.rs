//! `junction check` on a project folder with route files: route problems are
//! reported as `file:line:col` next to the config's, and make the check fail.

use std::path::Path;
use std::process::Command;

/// Runs `junction check` in `dir`; returns (exit code, stdout, stderr).
fn check(dir: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_junction"))
        .args(["check", "--config", "junction.toml"])
        .current_dir(dir)
        .output()
        .expect("run the junction binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A project with the shipped mappings, a config with listener `pas` and
/// destinations `store` and `mesh_hwe`, and
/// `routes` as the only route file.
fn project(routes: &str) -> tempfile::TempDir {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("junction.toml"),
        "[listeners.pas]\nbind = \"127.0.0.1:12575\"\n\n\
         [destinations.store]\nkind = \"store\"\n\n\
         [destinations.mesh_hwe]\nkind = \"file\"\ndir = \"out/hwe\"\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    for entry in std::fs::read_dir(repo.join("mappings")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            std::fs::copy(
                &path,
                dir.path().join("mappings").join(path.file_name().unwrap()),
            )
            .unwrap();
        }
    }
    std::fs::create_dir(dir.path().join("routes")).unwrap();
    std::fs::write(dir.path().join("routes/main.toml"), routes).unwrap();
    dir
}

#[test]
fn good_routes_check_clean() {
    let dir = project(
        "[routes.adt]\nlisteners = [\"pas\"]\nmessages = [\"ADT^A01\"]\nwhen = \"patient.gp_practice | lookup(ics) = 'HWE'\"\nmapping = \"adt\"\ndestinations = [\"mesh_hwe\"]\n\n[tables.ics]\nE82061 = \"HWE\"\n",
    );
    let (code, stdout, stderr) = check(dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        "junction.toml: ok, 1 listener(s), store data/junction.db (sync=full), 4 mapping(s)"
    );
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn bad_route_file_is_reported_with_line_and_column_and_exit_1() {
    let dir = project(
        r#"[routes.adt]
listeners = ["pass"]
messages = ["ADT^A01", "ADT^A11"]
mapping = "adt"
destinations = ["store"]
timeout_secs = 3

[routes.lab]
messages = ["ORU^R01"]
when = "patient.gp_practice | lookup(practice_ics) = HWE"
mapping = "oru"
destinations = ["store"]
"#,
    );
    let (code, stdout, stderr) = check(dir.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let expected = [
        (
            "routes/main.toml:6:1",
            "error: unknown field `timeout_secs`, expected one of `description`, `listeners`, `sources`, `messages`, `sending_applications`, `sending_facilities`, `when`, `mapping`, `destinations`",
        ),
        (
            "routes/main.toml:10:54",
            "error: in `when` of route `lab`: unknown field `HWE` (a literal is quoted: 'HWE')",
        ),
    ];
    assert!(
        stderr.contains(" 10 | when = \"patient.gp_practice | lookup(practice_ics) = HWE\"\n    |                                                      ^^^\n"),
        "{stderr}"
    );
    for (at, message) in expected {
        // `file:line:col: error: message`, one line each
        assert!(
            stderr.contains(&format!("{at}: {message}")),
            "{at}: {message}\n---\n{stderr}"
        );
    }
    // The route with a syntax problem is reported alone; the other route's bad
    // references are still checked. The snippet underlines the value.
    let route_ok_dir = project(
        r#"[routes.adt]
listeners = ["pass"]
messages = ["ADT^A01", "ADT^A11"]
mapping = "adt"
destinations = ["store"]
"#,
    );
    let (code, _, stderr) = check(route_ok_dir.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(
            "routes/main.toml:2:14: error: route `adt` names unknown listener `pass`, expected `pas`\n"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "routes/main.toml:3:24: error: route `adt` sends `ADT^A11` to mapping `adt`, which does not declare it"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            " 3 | messages = [\"ADT^A01\", \"ADT^A11\"]\n   |                        ^^^^^^^^^"
        ),
        "{stderr}"
    );
    assert!(
        stderr
            .trim_end()
            .ends_with("error: checking junction.toml found 2 error(s)"),
        "{stderr}"
    );
}

#[test]
fn unknown_mapping_is_named_with_a_suggestion() {
    let dir = project(
        "[routes.lab]\nmessages = [\"ORU^R01\"]\nmapping = \"oru_r1\"\ndestinations = [\"store\"]\n",
    );
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("routes/main.toml:3:11: error: route `lab` uses unknown mapping `oru_r1`, expected one of `adt`, `adt_cancel`, `adt_merge`, `oru_r01` (did you mean `oru_r01`?)\n"),
        "{stderr}"
    );
}

#[test]
fn mapping_problems_are_reported_too() {
    let dir = project(
        "[routes.adt]\nmessages = [\"ADT^A01\"]\nmapping = \"adt\"\ndestinations = [\"store\"]\n",
    );
    std::fs::write(
        dir.path().join("mappings/broken.toml"),
        "[mapping]\nname = \"broken\"\nmessages = [\"ADT^A01\"]\nbogus = 1\n",
    )
    .unwrap();
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("mappings/broken.toml:4:1: error: "),
        "{stderr}"
    );
}

#[test]
fn routes_are_checked_against_a_config_with_errors_of_its_own() {
    // The config has a problem (an unknown key in a destination): the routes'
    // references are still checked against the ids it declares, in the same run.
    let dir = project(
        "[routes.adt]\nlisteners = [\"pas\"]\nmessages = [\"ADT^A01\"]\nmapping = \"adt\"\ndestinations = [\"store\", \"mesh_nowhere\", \"mesh_hwe\"]\n",
    );
    let config = dir.path().join("junction.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("dir = \"out/hwe\"", "dir = \"out/hwe\"\ncolour = 1"),
    )
    .unwrap();
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("junction.toml:10:1: error: unknown field `colour`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("routes/main.toml:5:26: error: route `adt` sends to unknown destination `mesh_nowhere`, expected one of `mesh_hwe`, `store`"),
        "{stderr}"
    );
    // `mesh_hwe` is declared (its own table is what is wrong): not reported
    assert!(
        !stderr.contains("unknown destination `mesh_hwe`"),
        "{stderr}"
    );
    assert!(stderr.contains("found 2 error(s)"), "{stderr}");
}

#[test]
fn every_problem_of_a_route_is_reported_in_one_run() {
    // a route with a bad pattern also names an unknown listener and
    // destination; one with no destinations also names an unknown source
    let dir = project(
        "[routes.e]\nlisteners = [\"nope\"]\nmessages = [\"ADT\"]\nmapping = \"adt\"\ndestinations = [\"nowhere\"]\n\n\
         [routes.f]\nsources = [\"nosource\"]\nmessages = [\"MESH^*\"]\ndestinations = []\n",
    );
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 1, "{stderr}");
    for expected in [
        "routes/main.toml:2:14: error: route `e` names unknown listener `nope`",
        "routes/main.toml:3:13: error: invalid message pattern `ADT`",
        "routes/main.toml:5:17: error: route `e` sends to unknown destination `nowhere`",
        "routes/main.toml:8:12: error: route `f` names unknown source `nosource`",
        "routes/main.toml:10:16: error: route `f` has an empty `destinations` list",
    ] {
        assert!(stderr.contains(expected), "{expected}\n{stderr}");
    }
}
