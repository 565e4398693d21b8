//! The access log: one JSON line per request, written by a background service so
//! the request path only formats a line and hands it over. Under attack, lines for
//! rejected requests are sampled (at most `rejected_lines_per_second`, the rest
//! counted in `rampart_access_log_sampled_out_total`), and when the writer falls
//! behind, lines are dropped and counted rather than slowing requests down.

use crate::metrics::Metrics;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rampart_config::{AccessLogConfig, AccessLogTarget};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Lines queued for the writer before new ones are dropped.
const QUEUE: usize = 16_384;

/// The request-path side of the access log.
#[derive(Debug)]
pub struct AccessLog {
    sender: mpsc::Sender<String>,
    rejected_per_second: u64,
    /// (second, lines written for rejected requests in that second), packed.
    window: AtomicU64,
}

/// The writer side, run as a background service.
#[derive(Debug)]
pub struct AccessLogWriter {
    receiver: Mutex<Option<mpsc::Receiver<String>>>,
    target: AccessLogTarget,
}

/// Builds both sides, or `None` when the access log is off.
pub fn access_log(config: &AccessLogConfig) -> Option<(AccessLog, AccessLogWriter)> {
    let target = config.target.clone()?;
    let (sender, receiver) = mpsc::channel(QUEUE);
    Some((
        AccessLog {
            sender,
            rejected_per_second: u64::from(config.rejected_lines_per_second),
            window: AtomicU64::new(0),
        },
        AccessLogWriter {
            receiver: Mutex::new(Some(receiver)),
            target,
        },
    ))
}

impl AccessLog {
    /// Whether a line for a rejected request may be written now (`now_secs` is
    /// the current Unix second). The budget is per second and shared by threads.
    pub fn admit_rejected(&self, now_secs: u64) -> bool {
        let now = now_secs & 0xffff_ffff;
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (second, count) = (current >> 32, current & 0xffff_ffff);
            let (next, ok) = if second != now {
                ((now << 32) | 1, self.rejected_per_second > 0)
            } else if count < self.rejected_per_second {
                (current + 1, true)
            } else {
                return false;
            };
            if !ok {
                return false;
            }
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Queues a line; counts it as dropped when the writer is behind.
    pub fn write(&self, line: String, metrics: &Metrics) {
        if self.sender.try_send(line).is_err() {
            metrics.access_log_dropped();
        }
    }
}

/// Waits for the next line (`false` at shutdown or when every sender is
/// gone), then appends it and whatever else is already queued, up to about
/// 60 KiB, to `buf`, one line each: one write for a burst of lines.
pub(crate) async fn next_batch(
    receiver: &mut mpsc::Receiver<String>,
    shutdown: &mut ShutdownWatch,
    buf: &mut Vec<u8>,
) -> bool {
    let line = tokio::select! {
        line = receiver.recv() => line,
        _ = shutdown.changed() => None,
    };
    let Some(line) = line else { return false };
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    while buf.len() < 60 * 1024 {
        match receiver.try_recv() {
            Ok(more) => {
                buf.extend_from_slice(more.as_bytes());
                buf.push(b'\n');
            }
            Err(_) => break,
        }
    }
    true
}

#[async_trait]
impl BackgroundService for AccessLogWriter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut receiver) = self.receiver.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        let mut out: Box<dyn Write + Send> = match &self.target {
            AccessLogTarget::Stdout => Box::new(std::io::stdout()),
            AccessLogTarget::File(path) => {
                match std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                {
                    Ok(f) => Box::new(f),
                    Err(e) => {
                        log::error!(
                            "cannot open the access log {}: {e}; access log off",
                            path.display()
                        );
                        return;
                    }
                }
            }
        };
        let mut buf = Vec::with_capacity(64 * 1024);
        while next_batch(&mut receiver, &mut shutdown, &mut buf).await {
            if let Err(e) = out.write_all(&buf).and_then(|_| out.flush()) {
                log::error!("access log write failed: {e}");
            }
            buf.clear();
        }
        let _ = out.flush();
    }
}

/// Shared handle type.
pub type SharedAccessLog = Option<Arc<AccessLog>>;
