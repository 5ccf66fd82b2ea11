//! `_procpy_progress`: the progress line of long `Pool.map`/`imap` runs (`procpy --progress`),
//! drawn by indicatif on stderr: tasks done/total, rate and ETA.

pub(crate) use _procpy_progress::module_def;

#[rustpython_vm::pymodule]
mod _procpy_progress {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    use rustpython_vm::builtins::PyType;
    use rustpython_vm::types::Constructor;
    use rustpython_vm::{pyclass, Py, PyPayload, PyResult, VirtualMachine};

    /// `Progress(total, label)`: total may be None while the length is unknown (imap of an
    /// iterator); it is drawn on stderr, at most 10 times a second.
    #[pyattr]
    #[pyclass(name = "Progress", module = "_procpy_progress")]
    #[derive(Debug, PyPayload)]
    pub(super) struct Progress {
        bar: ProgressBar,
        /// When the job started (the bar appears later).
        start: std::time::Instant,
    }

    impl Progress {
        /// Rate and ETA over the whole job: indicatif's own estimate would only see the steps
        /// after the bar appeared.
        fn update_message(&self) {
            let secs = self.start.elapsed().as_secs_f64().max(1e-6);
            let done = self.bar.position();
            let rate = done as f64 / secs;
            let eta = match self.bar.length() {
                Some(total) if rate > 0.0 && total >= done => {
                    format!("  ETA {:.0}s", (total - done) as f64 / rate)
                }
                _ => String::new(),
            };
            self.bar.set_message(format!("{rate:.1} tasks/s{eta}"));
        }
    }

    fn style(known: bool) -> ProgressStyle {
        let template = if known {
            "{prefix} [{bar:30}] {pos}/{len} tasks  {msg}"
        } else {
            "{prefix} {spinner} {pos} tasks  {msg}"
        };
        ProgressStyle::with_template(template).expect("a valid template").progress_chars("=> ")
    }

    impl Constructor for Progress {
        type Args = (Option<u64>, String, u64, f64);

        /// `Progress(total, label, done, elapsed)`: the bar appears once a job has run a while,
        /// so it starts from what is already done (and the rate counts from the job's start).
        fn py_new(
            _cls: &Py<PyType>,
            (total, label, done, elapsed): Self::Args,
            _vm: &VirtualMachine,
        ) -> PyResult<Self> {
            let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr_with_hz(10))
                .with_position(done);
            bar.set_style(style(total.is_some()));
            bar.set_prefix(label);
            // Any float may come in (NaN, infinity): what cannot be a duration counts as none.
            let elapsed =
                std::time::Duration::try_from_secs_f64(elapsed.max(0.0)).unwrap_or_default();
            let start = std::time::Instant::now()
                .checked_sub(elapsed)
                .unwrap_or_else(std::time::Instant::now);
            let p = Progress { bar, start };
            p.update_message();
            Ok(p)
        }
    }

    #[pyclass(with(Constructor))]
    impl Progress {
        /// Tasks done so far.
        #[pymethod]
        fn set(&self, done: u64) {
            self.bar.set_position(done);
            self.update_message();
        }

        /// The total, once known.
        #[pymethod]
        fn set_total(&self, total: u64) {
            self.bar.set_style(style(true));
            self.bar.set_length(total);
        }

        /// Draw the final state and leave the line on screen.
        #[pymethod]
        fn finish(&self) {
            self.update_message();
            self.bar.finish();
        }
    }
}
