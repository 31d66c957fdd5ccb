//! Users and passwords at CONNECT, managed with `weir user`, checked with independent clients.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::clients::v4::{Client, ConnectReturnCode, options};
use crate::clients::v5;
use crate::support::{Raw, TestGateway, WAIT, connect_v311, eventually};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// Runs `weir user ...` against the gateway's data directory, with `stdin` as the password input.
async fn weir_user(gw: &TestGateway, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(WEIR)
        .arg("user")
        .args(args)
        .arg("--data-dir")
        .arg(gw.data_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).await.unwrap();
    tokio::time::timeout(WAIT, child.wait_with_output()).await.unwrap().unwrap()
}

async fn connect_code(gw: &TestGateway, user: Option<(&str, &str)>) -> ConnectReturnCode {
    let mut opts = options("dev-1", gw.port());
    if let Some((u, p)) = user {
        opts.set_credentials(u, p);
    }
    let mut client = Client::start(opts);
    loop {
        match client.next_event().await {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => return ack.code,
            Ok(_) => {}
            // rumqttc reports a refusal as the error that ends its event loop, naming the code.
            Err(e) if e.contains("BadUserNamePassword") => return ConnectReturnCode::BadUserNamePassword,
            Err(e) if e.contains("NotAuthorized") => return ConnectReturnCode::NotAuthorized,
            Err(e) => panic!("connection failed: {e}"),
        }
    }
}

fn gateway_requiring_credentials(c: &mut weir::config::Config) {
    for l in &mut c.listeners {
        l.allow_anonymous = false;
    }
}

#[tokio::test]
async fn users_added_by_the_cli_can_connect_at_once_and_others_cannot() {
    let gw = TestGateway::start_with(gateway_requiring_credentials).await;
    assert_eq!(connect_code(&gw, None).await, ConnectReturnCode::NotAuthorized, "no anonymous access");

    let out = weir_user(&gw, &["add", "alice", "--role", "operators"], "correct horse battery\n").await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The running gateway notices the change without a restart.
    let security = gw.gateway().security().clone();
    eventually("the gateway knows alice", || async { security.knows("alice") }).await;
    assert_eq!(connect_code(&gw, Some(("alice", "correct horse battery"))).await, ConnectReturnCode::Success);
    assert_eq!(connect_code(&gw, Some(("alice", "wrong"))).await, ConnectReturnCode::BadUserNamePassword);
    assert_eq!(
        connect_code(&gw, Some(("mallory", "whatever1"))).await,
        ConnectReturnCode::BadUserNamePassword
    );

    // v5 reason codes: 0x86 bad user name or password, 0x87 not authorized.
    let mut opts = v5::options("dev-5", gw.port());
    opts.set_credentials("alice", "nope");
    let mut c = v5::Client::start(opts);
    let error = c.closed().await;
    assert!(error.contains("BadUserNamePassword"), "{error}");
    let mut c = v5::Client::start(v5::options("anon-5", gw.port()));
    let error = c.closed().await;
    assert!(error.contains("NotAuthorized"), "{error}");

    // An independent client: mosquitto_pub with the right and the wrong password.
    let pub_with = |password: &str| {
        let mut cmd = Command::new("mosquitto_pub");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &gw.port().to_string(),
            "-u",
            "alice",
            "-P",
            password,
            "-t",
            "t",
            "-m",
            "x",
        ]);
        cmd
    };
    let ok = tokio::time::timeout(WAIT, pub_with("correct horse battery").output()).await.unwrap().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let bad = tokio::time::timeout(WAIT, pub_with("incorrect").output()).await.unwrap().unwrap();
    assert!(!bad.status.success());

    let out = weir_user(&gw, &["list"], "").await;
    let listing = String::from_utf8(out.stdout).unwrap();
    assert!(listing.starts_with("alice\toperators\t"), "{listing}");
    gw.stop().await;
}

#[tokio::test]
async fn bad_input_to_weir_user_is_refused_clearly_and_changes_nothing() {
    let gw = TestGateway::start_with(gateway_requiring_credentials).await;
    for (args, stdin, needle) in [
        (&["add", "bob"][..], "short\n", "shorter than 8"),
        (&["add", "bob"][..], "\n", "password refused"),
        (&["add", "bad/name"][..], "long enough password\n", "invalid user name"),
        (&["del", "nobody"][..], "", "no user \"nobody\""),
        (&["passwd", "nobody"][..], "long enough password\n", "no user \"nobody\""),
    ] {
        let out = weir_user(&gw, args, stdin).await;
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let out = weir_user(&gw, &["add", "carol"], "long enough password\n").await;
    assert!(out.status.success());
    let out = weir_user(&gw, &["add", "carol"], "another long password\n").await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = weir_user(&gw, &["list"], "").await;
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 1, "only carol");

    // Deleting a user locks it out of new connections without a restart.
    let security = gw.gateway().security().clone();
    eventually("the gateway knows carol", || async { security.knows("carol") }).await;
    assert_eq!(connect_code(&gw, Some(("carol", "long enough password"))).await, ConnectReturnCode::Success);
    // Carol is connected when she is deleted: the connection is closed (v5: 0x98).
    let mut live = Raw::connect(gw.tcp).await;
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0xC2, 0, 0, 0, 0, 6];
    body.extend(b"carol1");
    for s in ["carol", "long enough password"] {
        body.extend((s.len() as u16).to_be_bytes());
        body.extend(s.as_bytes());
    }
    live.send(&crate::support::packet(0x10, &body)).await;
    assert_eq!(live.read_packet().await[3], 0, "carol is connected");
    assert!(weir_user(&gw, &["del", "carol"], "").await.status.success());
    let reply = live.read_to_close().await;
    assert_eq!((reply[0], reply[2]), (0xE0, 0x98), "administrative action: {reply:?}");
    eventually("the gateway forgets carol", || async { !security.knows("carol") }).await;
    assert_eq!(
        connect_code(&gw, Some(("carol", "long enough password"))).await,
        ConnectReturnCode::BadUserNamePassword
    );
    gw.stop().await;
}

#[tokio::test]
async fn failed_logins_are_throttled_and_audited() {
    let gw = TestGateway::start_with(gateway_requiring_credentials).await;
    gw.gateway().security().add_user("dave", "correct horse battery", &[], "test").await.unwrap();
    for _ in 0..6 {
        assert_eq!(connect_code(&gw, Some(("dave", "guess"))).await, ConnectReturnCode::BadUserNamePassword);
    }
    // Now even the right password waits for the back-off.
    assert_eq!(
        connect_code(&gw, Some(("dave", "correct horse battery"))).await,
        ConnectReturnCode::BadUserNamePassword
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while connect_code(&gw, Some(("dave", "correct horse battery"))).await != ConnectReturnCode::Success {
        assert!(tokio::time::Instant::now() < deadline, "the back-off never ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let audit = || async {
        let out = Command::new(WEIR).args(["audit", "--data-dir"]).arg(gw.data_dir()).output().await.unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The successful login is written in the background, so as not to hold up the CONNACK.
    eventually("the login is audited", || async { audit().await.contains(" login user \"dave\"") }).await;
    let audit = audit().await;
    assert!(audit.matches("login.failed").count() >= 6, "{audit}");
    gw.stop().await;
}

#[tokio::test]
async fn raw_3_1_1_connack_codes() {
    let gw = TestGateway::start_with(gateway_requiring_credentials).await;
    let mut c = Raw::connect(gw.tcp).await;
    c.send(&connect_v311("raw", true, 0)).await;
    assert_eq!(c.read_to_close().await, [0x20, 2, 0, 5]);
    gw.stop().await;
}

/// `config.sqlite` holds password hashes and `pki/` the CA key: the data directory is 0700 and every file in it
/// 0600, and looser modes left by an older version or a copied directory are repaired at start-up.
#[tokio::test]
async fn the_data_directory_and_its_files_are_private_to_the_gateway() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let gw = TestGateway::start_with(|c| {
        std::fs::set_permissions(&c.data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // An empty file is an empty SQLite database.
        std::fs::write(c.data_dir.join("config.sqlite"), b"").unwrap();
        std::fs::set_permissions(c.data_dir.join("config.sqlite"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
    })
    .await;
    let dir = gw.data_dir().to_owned();
    assert_eq!(mode(&dir), 0o700);
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
            files.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    for expected in ["config.sqlite", "journal.sqlite", "journal.sqlite-wal"] {
        assert!(files.iter().any(|f| f == expected), "{expected} in {files:?}");
    }
    gw.stop().await;
}
