//! Commands fed on standard input, as `weft inject - | kubectl apply -f -`.

use std::io::Write;
use std::process::{Command, Stdio};

use super::Run;

/// Runs `cmd` with `input` on stdin.
pub fn with_stdin(cmd: &mut Command, input: &str) -> Run {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_string();
    // Written from a thread: a child that answers before reading it all
    // must not deadlock the test.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("wait");
    let _ = writer.join();
    Run::from(out)
}

/// `weft ARGS` with `input` on stdin.
pub fn weft(args: &[&str], input: &str) -> Run {
    with_stdin(Command::new(env!("CARGO_BIN_EXE_weft")).args(args), input)
}
