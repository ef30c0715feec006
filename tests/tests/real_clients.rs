//! Durable Functions' own clients against a real host: the Python client
//! (`azure-functions-durable` 1.7.0) and the JavaScript client (`durable-functions` 3.x)
//! drive every call they offer (`tests/clients/*`) against `client_host` on an ephemeral
//! port with a SQLite file and a fixed key. `tests/clients/install.sh` installs them under
//! `target/` (network access to PyPI and npm the first time; python3 with venv and pip,
//! node and npm on the PATH). A client that fails, or hangs past its time, fails the test.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "client-test-key-0123456789abcdef";
/// A client run's limit: the scripts bound each step themselves; this catches the rest.
const RUN_LIMIT: Duration = Duration::from_secs(300);

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// Installs the clients (once; later calls find them installed) and returns their place.
fn installed_clients() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("clients");
    let status = Command::new("bash")
        .arg(scripts().join("install.sh"))
        .arg(&dir)
        .status()
        .expect("bash runs");
    assert!(
        status.success(),
        "installing the Durable Functions clients failed (needs python3 with venv and pip, node and npm, and PyPI and npm reachable)"
    );
    dir
}

/// `client_host` on its own SQLite file; stops when dropped (its standard input closes).
struct HostProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    url: String,
    dir: PathBuf,
}

impl HostProcess {
    fn start(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "durable-clients-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_client_host"))
            .arg(dir.join("clients.db"))
            .arg(KEY)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("client_host starts");
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("client_host said {line:?}"))
            .to_string();
        HostProcess {
            child,
            stdin,
            url,
            dir,
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs one client script against a fresh host; fails the test when it fails or runs past
/// [`RUN_LIMIT`]. Its output is printed either way.
fn run_client(tag: &str, program: &Path, script: &str, env: &[(&str, &Path)]) {
    let host = HostProcess::start(tag);
    let out = host.dir.join("client.out");
    let mut child = Command::new(program)
        .arg(scripts().join(script))
        .arg(&host.url)
        .arg(KEY)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(host.dir.join("client.err")).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{} does not start: {e}", program.display()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    let stderr = std::fs::read_to_string(host.dir.join("client.err")).unwrap_or_default();
    println!("{stdout}");
    eprintln!("{stderr}");
    match status {
        Some(s) => assert!(
            s.success(),
            "the {tag} client failed ({s}):\n{stdout}\n{stderr}"
        ),
        None => panic!("the {tag} client ran past {RUN_LIMIT:?}:\n{stdout}\n{stderr}"),
    }
}

#[test]
fn the_python_client_drives_every_call() {
    let clients = installed_clients();
    run_client(
        "python",
        &clients.join("bin/python"),
        "python_client.py",
        &[],
    );
}

#[test]
fn the_javascript_client_drives_every_call() {
    let clients = installed_clients();
    run_client(
        "js",
        Path::new("node"),
        "js_client.js",
        &[("NODE_PATH", &clients.join("node/node_modules"))],
    );
}
