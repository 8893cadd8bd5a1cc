//! Running a site's hook command: argv (no shell), a bounded time, and an honest report.
//!
//! A hook is whatever the site uses to move traffic (an HAProxy runtime-API script, kubectl, a
//! webhook). emberwatch cannot know what it does, so it controls only what it can: the command
//! runs with exactly the argv configured (no shell, so no quoting surprises), with the drain's
//! facts in its environment, in its own process group so that on timeout the whole group (the
//! script and whatever it started) is killed, and with the tail of its output kept for the ack,
//! because "failed" alone tells an operator at 3 a.m. nothing.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio_util::sync::CancellationToken;

/// Lines of output kept for the ack.
pub const TAIL_LINES: usize = 20;
/// Bytes of output kept for the ack, at most.
pub const TAIL_BYTES: usize = 2000;

/// After the hook exits (or is killed), how long its output pipes may stay open (held by
/// something it started in the background) before they are abandoned.
const PIPE_GRACE: Duration = Duration::from_secs(1);

/// How a hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Exit status 0.
    pub ok: bool,
    /// The exit code; `None` when killed by a signal, timed out, or never started.
    pub exit_status: Option<i32>,
    /// One line for the operator.
    pub detail: String,
    /// The last lines of stdout and stderr, interleaved as they arrived.
    pub output: String,
}

/// Runs `argv` with `env` added to emberwatch's environment; kills it after `timeout`, or when
/// `cancel` fires (the agent is stopping).
pub async fn run(
    argv: &[String],
    env: &[(&str, String)],
    timeout: Duration,
    cancel: &CancellationToken,
) -> Report {
    let Some((program, args)) = argv.split_first() else {
        return never_ran("no command configured".into());
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return never_ran(format!("cannot start {program}: {e}")),
    };
    let tail = Tail::default();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tail.collect(out));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tail.collect(err));
    }
    let pid = child.id();
    let ended = tokio::select! {
        r = tokio::time::timeout(timeout, child.wait()) => match r {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(e)) => Err(format!("{program}: cannot wait for it: {e}")),
            Err(_) => Err(format!(
                "{program} still running after {}: killed",
                humantime::format_duration(timeout)
            )),
        },
        () = cancel.cancelled() => Err(format!("{program}: killed because the agent is stopping")),
    };
    if ended.is_err() {
        kill_group(pid);
        let _ = child.start_kill();
        let _ = tokio::time::timeout(PIPE_GRACE, child.wait()).await;
    }
    for r in readers {
        if tokio::time::timeout(PIPE_GRACE, r).await.is_err() {
            tracing::debug!("hook {program}: output still open after exit; not waiting for it");
        }
    }
    let took =
        humantime::format_duration(Duration::from_millis(started.elapsed().as_millis() as u64));
    let output = tail.text();
    match ended {
        Ok(status) => {
            let code = status.code();
            let detail = match code {
                Some(0) => format!("{program} exited 0 after {took}"),
                Some(c) => format!("{program} exited {c} after {took}"),
                None => format!("{program} killed by a signal after {took}"),
            };
            Report {
                ok: code == Some(0),
                exit_status: code,
                detail: with_last_line(detail, &output),
                output,
            }
        }
        Err(why) => Report {
            ok: false,
            exit_status: None,
            detail: with_last_line(why, &output),
            output,
        },
    }
}

fn never_ran(detail: String) -> Report {
    Report {
        ok: false,
        exit_status: None,
        detail,
        output: String::new(),
    }
}

/// A failing hook's last line usually says why; it goes into the one-line detail.
fn with_last_line(detail: String, output: &str) -> String {
    match output.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(last) => format!("{detail}: {}", last.trim()),
        None => detail,
    }
}

/// SIGKILL to the hook's process group (it leads its own, see `process_group(0)`), so a
/// script's children die with it. Done with kill(1): the crate has no libc binding of its own.
fn kill_group(pid: Option<u32>) {
    let Some(pid) = pid else { return };
    let status = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(e) = status {
        tracing::warn!(
            "cannot run kill(1) for hook process group {pid}: {e}; killing the hook only"
        );
    }
}

/// The last lines of output, bounded in lines and bytes.
#[derive(Clone, Default)]
struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    fn collect<R: AsyncRead + Unpin + Send + 'static>(&self, r: R) -> tokio::task::JoinHandle<()> {
        let lines = self.0.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(r).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let Ok(mut l) = lines.lock() else { return };
                l.push_back(line);
                while l.len() > TAIL_LINES {
                    l.pop_front();
                }
            }
        })
    }

    fn text(&self) -> String {
        let Ok(l) = self.0.lock() else {
            return String::new();
        };
        let mut text = l.iter().cloned().collect::<Vec<_>>().join("\n");
        if text.len() > TAIL_BYTES {
            let mut cut = text.len() - TAIL_BYTES;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            text = text[cut..].to_string();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    async fn go(a: &[&str], timeout: Duration) -> Report {
        run(
            &argv(a),
            &[("EMBERWATCH_ZONE", "room-1".into())],
            timeout,
            &CancellationToken::new(),
        )
        .await
    }

    #[tokio::test]
    async fn exit_zero_is_done_and_the_environment_is_passed() {
        let r = go(
            &["sh", "-c", "echo zone=$EMBERWATCH_ZONE"],
            Duration::from_secs(10),
        )
        .await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.exit_status, Some(0));
        assert_eq!(r.output, "zone=room-1");
        assert!(r.detail.starts_with("sh exited 0 after"), "{}", r.detail);
    }

    #[tokio::test]
    async fn a_failure_reports_its_code_and_last_line() {
        let r = go(
            &["sh", "-c", "echo first; echo 'no such backend' >&2; exit 3"],
            Duration::from_secs(10),
        )
        .await;
        assert!(!r.ok);
        assert_eq!(r.exit_status, Some(3));
        assert!(r.detail.ends_with(": no such backend"), "{}", r.detail);
        assert!(r.output.contains("first") && r.output.contains("no such backend"));
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_killed_with_its_children() {
        let t0 = Instant::now();
        // The shell starts a child that would hold the output pipe for a minute.
        let r = go(
            &["sh", "-c", "echo begun; sleep 60 & wait"],
            Duration::from_millis(300),
        )
        .await;
        assert!(!r.ok);
        assert_eq!(r.exit_status, None);
        assert!(
            r.detail.contains("still running after 300ms: killed"),
            "{}",
            r.detail
        );
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }

    #[tokio::test]
    async fn no_shell_means_no_expansion_and_a_missing_program_is_reported() {
        let r = go(&["echo", "$EMBERWATCH_ZONE;", "*"], Duration::from_secs(10)).await;
        assert_eq!(r.output, "$EMBERWATCH_ZONE; *");
        let r = go(&["/nonexistent/hook"], Duration::from_secs(10)).await;
        assert!(!r.ok);
        assert!(
            r.detail.starts_with("cannot start /nonexistent/hook"),
            "{}",
            r.detail
        );
        let r = go(&[], Duration::from_secs(10)).await;
        assert!(!r.ok);
    }

    #[test]
    fn the_tail_keeps_the_last_lines_and_bytes() {
        let t = Tail::default();
        {
            let mut l = t.0.lock().unwrap();
            for i in 0..100 {
                l.push_back(format!("line {i}"));
                while l.len() > TAIL_LINES {
                    l.pop_front();
                }
            }
        }
        let text = t.text();
        assert!(
            text.starts_with("line 80") && text.ends_with("line 99"),
            "{text}"
        );
    }
}
