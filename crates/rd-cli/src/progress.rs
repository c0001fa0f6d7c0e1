//! Progress on stderr: a bar on a terminal, a heartbeat line every few seconds when stderr is
//! piped or redirected (logs, CI, `cargo xtask train`), nothing with `--quiet`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rd_model::Progress;

/// Time between two heartbeat lines.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Where the progress goes.
enum Output {
    Bar(ProgressBar),
    Lines { last: Instant },
    Hidden,
}

/// The progress of one long phase (training, scoring), counted in `unit`s.
pub struct Reporter {
    what: &'static str,
    unit: &'static str,
    total: u64,
    done: u64,
    started: Instant,
    output: Output,
}

impl Reporter {
    /// A phase labelled `what` of `total` `unit`s (e.g. `"scoring"`, `"image"`).
    pub fn new(what: &'static str, unit: &'static str, total: u64, quiet: bool) -> Self {
        let output = if quiet {
            Output::Hidden
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            let style =
                ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg} eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(what);
            Output::Bar(bar)
        } else {
            Output::Lines {
                last: Instant::now(),
            }
        };
        Reporter {
            what,
            unit,
            total,
            done: 0,
            started: Instant::now(),
            output,
        }
    }

    /// One more `n` units done (rate measured here).
    pub fn inc(&mut self, n: u64) {
        let rate = (self.done + n) as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        self.show(self.done + n, None, None, rate);
    }

    /// A report from a training run or a scoring pass of rd-model.
    pub fn report(&mut self, p: &Progress) {
        self.total = p.total;
        self.show(p.done, p.epoch, p.loss, p.images_per_sec);
    }

    fn show(&mut self, done: u64, epoch: Option<(usize, usize)>, loss: Option<f64>, rate: f64) {
        self.done = done;
        let epoch = epoch.map(|(e, n)| format!("epoch {e}/{n}"));
        let after: Vec<String> = loss
            .map(|l| format!("loss {l:.4}"))
            .into_iter()
            .chain([format!("{rate:.1} img/s")])
            .collect();
        match &mut self.output {
            Output::Bar(bar) => {
                bar.set_length(self.total);
                bar.set_position(done);
                let all: Vec<String> = epoch.into_iter().chain(after).collect();
                bar.set_message(all.join("  "));
            }
            Output::Lines { last } => {
                if last.elapsed() < HEARTBEAT {
                    return;
                }
                *last = Instant::now();
                // e.g. `training: epoch 2/5, step 37/90, loss 0.4123, 12.3 img/s, eta 1m20s`
                let count = format!("{} {done}/{}", self.unit, self.total);
                let all: Vec<String> = epoch.into_iter().chain([count]).chain(after).collect();
                eprintln!("{}: {}, eta {}", self.what, all.join(", "), self.eta());
            }
            Output::Hidden => {}
        }
    }

    /// The remaining time at the average pace so far.
    fn eta(&self) -> String {
        if self.done == 0 {
            return "?".into();
        }
        let per_unit = self.started.elapsed().as_secs_f64() / self.done as f64;
        duration(per_unit * self.total.saturating_sub(self.done) as f64)
    }

    /// Runs `f` (which prints) without tearing the bar.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.output {
            Output::Bar(bar) => bar.suspend(f),
            _ => f(),
        }
    }

    /// Ends the phase: the bar disappears; piped output gets a closing line for a long phase.
    pub fn finish(self) {
        match self.output {
            Output::Bar(bar) => bar.finish_and_clear(),
            Output::Lines { .. } if self.started.elapsed() >= HEARTBEAT => eprintln!(
                "{}: {} {}{} in {}",
                self.what,
                self.done,
                self.unit,
                if self.done == 1 { "" } else { "s" },
                duration(self.started.elapsed().as_secs_f64())
            ),
            Output::Lines { .. } | Output::Hidden => {}
        }
    }
}

/// `1h02m`, `3m05s` or `42s`.
fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::duration;

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(41.6), "42s");
        assert_eq!(duration(185.0), "3m05s");
        assert_eq!(duration(3720.0), "1h02m");
    }
}
