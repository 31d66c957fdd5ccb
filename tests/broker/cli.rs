//! The `weir` binary itself: version, help, configuration errors, serving and graceful shutdown on SIGTERM.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::{Raw, WAIT, connect_v5};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

#[tokio::test]
async fn version_and_help() {
    let out = Command::new(WEIR).arg("--version").output().await.unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("weir {}", env!("CARGO_PKG_VERSION")));
    let out = Command::new(WEIR).args(["serve", "--help"]).output().await.unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--config") && help.contains("127.0.0.1:1883"), "{help}");
}

#[tokio::test]
async fn unknown_config_key_is_an_error_naming_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, "[mqtt]\nreceive_maximum = 10\nrecieve_maximum = 10\n").unwrap();
    let out = Command::new(WEIR).args(["serve", "--config"]).arg(&path).output().await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("recieve_maximum") && err.contains("line 3") && err.contains("weir.toml"), "{err}");
    let out = Command::new(WEIR)
        .args(["check-config"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[tokio::test]
async fn serve_prints_its_listeners_and_shuts_down_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    let data = dir.path().join("state");
    let config = format!(
        "data_dir = {:?}\n[[listener]]\nname = \"t\"\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\n[[listener]]\nname = \"w\"\nprotocol = \"ws\"\nbind = \"127.0.0.1:0\"\n[console]\nbind = \"127.0.0.1:0\"\n",
        data.display().to_string()
    );
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(WEIR)
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut mqtt = None;
    let mut ws = false;
    let mut console = None;
    while mqtt.is_none() || !ws || console.is_none() {
        let line =
            tokio::time::timeout(WAIT, lines.next_line()).await.unwrap().unwrap().expect("weir exited");
        if let Some(addr) = line.strip_prefix("weir: MQTT on mqtt://") {
            mqtt = Some(addr.parse::<std::net::SocketAddr>().unwrap());
        }
        ws |= line.starts_with("weir: MQTT over WebSocket on ws://127.0.0.1:") && line.ends_with("/mqtt");
        if let Some(url) = line.strip_prefix("weir: console on http://") {
            console = Some(url.trim_end_matches('/').parse::<std::net::SocketAddr>().unwrap());
        }
    }
    // The console answers, and leads to its first-run page: there is no administrator yet.
    let mut http = Raw::connect(console.unwrap()).await;
    http.send(b"GET / HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").await;
    let reply = String::from_utf8_lossy(&http.read_to_close().await).into_owned();
    assert!(reply.starts_with("HTTP/1.1 303") && reply.contains("location: /setup"), "{reply}");
    assert!(data.join("setup-code").is_file(), "the setup code is written to the data directory");
    let mut client = Raw::connect(mqtt.unwrap()).await;
    client.send(&connect_v5("cli", 60)).await;
    assert_eq!(client.read_packet().await[0], 0x20);
    assert!(data.is_dir(), "the data directory is created");

    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().await.unwrap().success());
    let reply = client.read_to_close().await;
    assert_eq!((reply[0], reply[2]), (0xE0, 0x8B), "DISCONNECT server shutting down: {reply:?}");
    let status = tokio::time::timeout(WAIT, child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}

/// `weir backup` and `weir restore` on the command line; the gateway applies the staged restore at its next start.
#[tokio::test]
async fn backup_and_restore_from_the_command_line_are_applied_at_the_next_start() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let weir = |args: &[&str], stdin: &'static str| {
        let mut command = Command::new(WEIR);
        command
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        async move {
            let mut child = command.spawn().unwrap();
            child.stdin.take().unwrap().write_all(stdin.as_bytes()).await.unwrap();
            tokio::time::timeout(WAIT, child.wait_with_output()).await.unwrap().unwrap()
        }
    };
    let added = weir(&["user", "add", "alice", "--role", "admin"], "correct horse battery\n").await;
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let file = dir.path().join("gw.weirbackup");
    let made = weir(&["backup", "--out", file.to_str().unwrap()], "a long passphrase\n").await;
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    assert!(weir(&["user", "del", "alice"], "").await.status.success());
    let wrong = weir(&["restore", file.to_str().unwrap()], "not the passphrase\n").await;
    assert!(!wrong.status.success() && String::from_utf8_lossy(&wrong.stderr).contains("wrong passphrase"));
    let staged = weir(&["restore", file.to_str().unwrap()], "a long passphrase\n").await;
    assert!(staged.status.success(), "{}", String::from_utf8_lossy(&staged.stderr));
    assert!(String::from_utf8_lossy(&staged.stderr).contains("restart the gateway"));

    let mut config = weir::config::Config::for_test(&data);
    config.console = None;
    let listeners = weir::app::bind(&config).await.unwrap();
    let gateway = weir::app::Gateway::start(config, listeners).await.unwrap();
    assert!(gateway.security().knows("alice"), "the restored configuration is in force");
    let replaced: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("replaced-"))
        .collect();
    assert_eq!(replaced.len(), 1, "what it replaced is kept: {replaced:?}");
    gateway.shutdown().await;
    let audit = weir(&["audit"], "").await;
    assert!(String::from_utf8_lossy(&audit.stdout).contains("backup.restored"));
}
