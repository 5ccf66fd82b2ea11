//! `_procpy_trace`: the Python side's door to `crate::trace` (`procpy --trace`). Modules in
//! `py/multiprocessing` test `_procpy.trace_enabled()` once at import, and import this module
//! and call it only when tracing.

pub(crate) use _procpy_trace::module_def;

#[rustpython_vm::pymodule]
mod _procpy_trace {
    use crate::trace;
    use rustpython_vm::builtins::{PyDictRef, PyFloat, PyInt, PyStr};
    use rustpython_vm::function::OptionalArg;
    use rustpython_vm::{AsObject, PyResult, VirtualMachine};

    /// A JSON object from a dict of simple values (others become their `str()`), or None.
    fn args_json(
        args: OptionalArg<Option<PyDictRef>>,
        vm: &VirtualMachine,
    ) -> PyResult<Option<String>> {
        let Some(d) = args.flatten() else { return Ok(None) };
        let mut s = String::from("{");
        for (i, (k, v)) in d.into_iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            trace::json_str(&mut s, &k.str(vm)?.to_string_lossy());
            s.push(':');
            if vm.is_none(&v) {
                s.push_str("null");
            } else if v.is(&vm.ctx.true_value) {
                s.push_str("true");
            } else if v.is(&vm.ctx.false_value) {
                s.push_str("false");
            } else if let Some(i) = v.downcast_ref::<PyInt>() {
                s.push_str(&i.as_bigint().to_string());
            } else if let Some(f) = v.downcast_ref::<PyFloat>().filter(|f| f.to_f64().is_finite()) {
                s.push_str(&f.to_f64().to_string());
            } else {
                let text = match v.downcast_ref::<PyStr>() {
                    Some(t) => t.to_string_lossy().into_owned(),
                    None => v.str(vm)?.to_string_lossy().into_owned(),
                };
                // Events are single writes: keep them small.
                let text: String = text.chars().take(200).collect();
                trace::json_str(&mut s, &text);
            }
        }
        s.push('}');
        Ok(Some(s))
    }

    /// Whether this process records trace events (fixed for the life of the process).
    #[pyfunction]
    fn enabled() -> bool {
        trace::enabled()
    }

    /// The trace clock (CLOCK_MONOTONIC, microseconds).
    #[pyfunction]
    fn now() -> f64 {
        trace::now()
    }

    /// Name the current thread's track.
    #[pyfunction]
    fn thread_name(name: String) {
        trace::thread_name(&name);
    }

    /// Name this process's track (its start method is appended).
    #[pyfunction]
    fn process_name(name: String) {
        trace::process_name(&name);
    }

    #[pyfunction]
    fn begin(
        name: String,
        cat: String,
        args: OptionalArg<Option<PyDictRef>>,
        vm: &VirtualMachine,
    ) -> PyResult<()> {
        trace::begin_end(true, &name, &cat, args_json(args, vm)?.as_deref());
        Ok(())
    }

    #[pyfunction]
    fn end(
        name: String,
        cat: String,
        args: OptionalArg<Option<PyDictRef>>,
        vm: &VirtualMachine,
    ) -> PyResult<()> {
        trace::begin_end(false, &name, &cat, args_json(args, vm)?.as_deref());
        Ok(())
    }

    #[pyfunction]
    fn instant(
        name: String,
        cat: String,
        args: OptionalArg<Option<PyDictRef>>,
        vm: &VirtualMachine,
    ) -> PyResult<()> {
        trace::instant(&name, &cat, args_json(args, vm)?.as_deref());
        Ok(())
    }

    /// In the parent: the span that started child `pid` (from `t0` to now), with a flow to
    /// the child's `boot` span.
    #[pyfunction]
    fn started(t0: f64, child: String, pid: i32, method: String) -> PyResult<()> {
        if !trace::enabled() {
            return Ok(());
        }
        let args = format!(
            "{{\"child\":{},\"pid\":{pid},\"method\":{}}}",
            quoted(&child),
            quoted(&method)
        );
        let t1 = trace::now();
        trace::span_with_flow(
            &format!("start {child}"),
            "process",
            t0,
            t1,
            Some(&args),
            true,
            "start",
            start_key(pid),
        );
        Ok(())
    }

    /// In a child, as its target is about to run: the span from when this process came to
    /// exist (fork return or exec start) to now, and the end of the parent's `start` flow.
    #[pyfunction]
    fn booted() {
        if !trace::enabled() {
            return;
        }
        let t0 = trace::boot_t0();
        let args = format!("{{\"method\":{}}}", quoted(trace::start_method().unwrap_or("?")));
        let t1 = trace::now();
        trace::span_with_flow(
            "boot",
            "process",
            t0,
            t1,
            Some(&args),
            false,
            "start",
            start_key(nix::unistd::getpid().as_raw()),
        );
    }

    /// The exit of this process (`pid` None) or, seen by its parent, of child `pid`.
    #[pyfunction]
    fn exit(code: i64, pid: OptionalArg<Option<i32>>) {
        trace::exit(code, pid.flatten());
    }

    fn start_key(pid: i32) -> u64 {
        trace::flow_key(u64::MAX, &pid.to_le_bytes())
    }

    fn quoted(s: &str) -> String {
        let mut o = String::new();
        trace::json_str(&mut o, s);
        o
    }
}
