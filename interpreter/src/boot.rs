//! Booting an interpreter: RustPython's native stdlib, the frozen pure-Python stdlib (minus its
//! own `multiprocessing`, which ours replaces), our frozen `multiprocessing` and `_procpy`.

use crate::native;
use crate::repl::PromptOptions;
use nix::sys::signal::{self, SigHandler, Signal};
use rustpython_vm::compiler::core::frozen::FrozenLib;
use rustpython_vm::scope::Scope;
use rustpython_vm::{
    AsObject, Interpreter, InterpreterBuilder, PyResult, Settings, VirtualMachine,
};

/// Our Python sources (`interpreter/py`), compiled at build time.
static OUR_PYLIB: &FrozenLib =
    rustpython_vm::py_freeze!(dir = "../py", crate_name = "rustpython_compiler_core");

/// What the interpreter should run as `__main__`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunMode {
    /// `procpy script.py args...`
    Script(String),
    /// `procpy -c CODE args...`
    Command(String),
    /// `procpy -m module args...`
    Module(String),
    /// `procpy` with no script and a terminal on stdin: the interactive prompt.
    Prompt,
    /// A child started by the spawn method (boot data arrives on `PROCPY_BOOT_FD`).
    SpawnChild,
    /// The fork server (boot data arrives on `PROCPY_BOOT_FD`).
    ForkServer,
}

/// The argument procpy passes to re-enter itself as a spawned child.
pub const SPAWN_CHILD_FLAG: &str = "--multiprocessing-spawn-child";
/// The argument procpy passes to re-enter itself as the fork server.
pub const FORK_SERVER_FLAG: &str = "--multiprocessing-forkserver";

fn is_replaced(name: &str) -> bool {
    name == "multiprocessing"
        || name.starts_with("multiprocessing.")
        || name == "concurrent.futures.process"
}

/// A builder for an interpreter with procpy's modules; `argv` becomes `sys.argv`.
pub fn builder(argv: Vec<String>) -> InterpreterBuilder {
    let mut settings = Settings::default();
    settings.argv = argv;
    // CPython 3.11 here writes UTF-8 to pipes too (its locale is UTF-8); RustPython would pick ASCII.
    if std::env::var_os("PYTHONIOENCODING").is_none() {
        settings.stdio_encoding = Some("utf-8".to_owned());
    }
    // Like CPython, honour PYTHONPATH.
    if let Some(pp) = std::env::var_os("PYTHONPATH") {
        settings
            .path_list
            .extend(std::env::split_paths(&pp).map(|p| p.to_string_lossy().into_owned()));
    }
    // The codec carries `_procpy`'s handles (connections, queues, ...) through this table.
    crate::codec::set_handle_table(&native::HANDLES);
    let builder = InterpreterBuilder::new().settings(settings);
    let defs = rustpython_stdlib::stdlib_module_defs(&builder.ctx);
    let ours = native::module_def(&builder.ctx);
    let gil = native::gil::module_def(&builder.ctx);
    let progress = native::progress::module_def(&builder.ctx);
    let cluster = native::cluster::module_def(&builder.ctx);
    let trace = native::trace_module_def(&builder.ctx);
    builder
        .add_native_modules(&defs)
        .add_native_module(ours)
        .add_native_module(gil)
        .add_native_module(progress)
        .add_native_module(cluster)
        .add_native_module(trace)
        .add_frozen_modules(
            rustpython_pylib::FROZEN_STDLIB.into_iter().filter(|(n, _)| !is_replaced(n)),
        )
        .add_frozen_modules(OUR_PYLIB)
        .init_hook(|vm| {
            let state =
                rustpython_vm::common::rc::PyRc::get_mut(&mut vm.state).expect("fresh vm state");
            state.config.paths.stdlib_dir = Some(rustpython_pylib::LIB_PATH.to_owned());
        })
}

/// The command line's say on the interactive prompt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Interactive {
    /// `-i`: the prompt after the script (or `-c`, `-m`) has run, whatever it raised.
    pub inspect: bool,
    /// `-q`: no banner.
    pub quiet: bool,
}

/// Run `mode` in a fresh interpreter and return the process exit status, as `python3` would.
pub fn run(mode: RunMode, argv: Vec<String>) -> u32 {
    run_interactive(mode, argv, Interactive::default())
}

/// [`run`], with the prompt as `interactive` asks.
pub fn run_interactive(mode: RunMode, argv: Vec<String>, interactive: Interactive) -> u32 {
    die_of_faults();
    // No cyclic collection while the interpreter builds itself: the boot allocates tens of
    // thousands of long-lived objects and collecting them was ~10% of a bare start (perf).
    // Collection is back on before any user code runs.
    let gc = rustpython_vm::gc_state::gc_state();
    gc.disable();
    let interp: Interpreter = builder(argv).build();
    let res = interp.enter(|vm| run_in(vm, &mode, interactive));
    // An uncaught KeyboardInterrupt: like CPython, print it, finalize (threads joined, atexit
    // handlers run: pools and children are cleaned up), and only then die of SIGINT.
    // RustPython's own handling kills the process before atexit runs.
    if let Err(exc) = &res {
        let interrupted = interp.enter(|vm| {
            use rustpython_vm::AsObject;
            let yes = exc.fast_isinstance(vm.ctx.exceptions.keyboard_interrupt);
            if yes {
                vm.print_exception(exc.clone());
            }
            yes
        });
        if interrupted {
            interp.finalize(None);
            default_action(Signal::SIGINT);
            let _ = signal::kill(nix::unistd::getpid(), Signal::SIGINT);
            return 128 + Signal::SIGINT as u32;
        }
    }
    interp.finalize(res.err())
}

/// SIGSEGV and SIGBUS back to their default action. Rust's runtime catches them to report stack
/// overflows, and a SIGSEGV sent with kill() (no fault to repeat) would then be survived; python3
/// dies of it, and so must we (a host embedding us sees the signal).
pub(crate) fn die_of_faults() {
    default_action(Signal::SIGSEGV);
    default_action(Signal::SIGBUS);
}

/// Put `sig`'s default action back.
fn default_action(sig: Signal) {
    // SAFETY: SIG_DFL installs no handler of ours, so no async-signal-safety rule is at stake;
    // the call fails only for a signal that cannot be caught, which leaves it as it was.
    let _ = unsafe { signal::signal(sig, SigHandler::SigDfl) };
}

/// What every interpreter of procpy's does before it runs any user code (CLI, children, the
/// fork server, embedding workers): RustPython corrected where libraries trip on it, and
/// the interactive-only state python3 lacks in a script taken away.
pub(crate) fn settle(vm: &VirtualMachine) -> PyResult<()> {
    call_glue(vm, "_procpy_fixes", "apply")?;
    // RustPython defines `sys.ps1`/`sys.ps2` (as '>>>>> '/'..... ') in every process; python3
    // only once it goes interactive, and code tests `hasattr(sys, 'ps1')` for that.
    for name in ["ps1", "ps2"] {
        let _ = vm.sys_module.as_object().del_attr(name, vm);
    }
    // Python 3.13+ colours tracebacks on a terminal; python3.11, the one procpy matches, does not.
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        if let Ok(colorize) = vm.import("_colorize", 0) {
            let _ = colorize.set_attr("COLORIZE", vm.ctx.new_bool(false), vm);
        }
    }
    Ok(())
}

fn run_in(vm: &VirtualMachine, mode: &RunMode, interactive: Interactive) -> PyResult<()> {
    let scope = vm.new_scope_with_main()?;
    settle(vm)?;
    // Children and the fork server keep collection off through procpy's own set-up; it comes
    // back when `spawn.prepare` starts running the user's main module.
    if !matches!(mode, RunMode::SpawnChild | RunMode::ForkServer) {
        rustpython_vm::gc_state::gc_state().enable();
    }
    // `procpy --emulate-gil`: every process of the run (see `crate::switches`).
    if crate::switches::get().emulate_gil {
        call_glue(vm, "procpy_gil", "enable")?;
    }
    let main = match mode {
        RunMode::SpawnChild => return call_glue(vm, "multiprocessing.spawn", "_child_main"),
        RunMode::ForkServer => return call_glue(vm, "multiprocessing.forkserver", "_server_main"),
        RunMode::Prompt => {
            // As `python3` with no script: `site`, the current directory as '' on sys.path.
            drop(vm.import("site", 0));
            vm.insert_sys_path(vm.new_pyobj(""))?;
            let opts = PromptOptions { banner: !interactive.quiet, startup: true };
            return crate::repl::run_prompt(vm, scope, opts);
        }
        RunMode::Script(path) => Main::File(path),
        RunMode::Command(code) => Main::Source(code),
        RunMode::Module(name) => Main::Module(name),
    };
    let res = run_main(vm, scope.clone(), main);
    if !interactive.inspect {
        return res;
    }
    // `-i`: whatever the script raised (SystemExit too) is printed and the prompt follows.
    if let Err(exc) = res {
        vm.print_exception(exc);
    }
    crate::repl::run_prompt(vm, scope, PromptOptions { banner: false, startup: false })
}

/// The user's code to run as `__main__`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Main<'a> {
    /// A script file (`python3 script.py`).
    File(&'a str),
    /// Source code (`python3 -c CODE`).
    Source(&'a str),
    /// A module run by name (`python3 -m module`).
    Module(&'a str),
}

/// Run `main` in `scope` (the `__main__` module's) as `python3` would: `site` imported, then
/// the script's directory (the current one for `-c` and `-m`) first on `sys.path`, and a
/// script's `__file__` absolute. The one runner of user code, for the CLI and for scripts a
/// host runs through the embedding API alike.
pub fn run_main(vm: &VirtualMachine, scope: Scope, main: Main<'_>) -> PyResult<()> {
    // `site` only for user code: children and the fork server get their sys.path from the parent.
    drop(vm.import("site", 0));
    match main {
        Main::File(path) if is_path_entry(path) => {
            // `python3 DIR` / `python3 APP.zip`: the entry itself first on sys.path, then its
            // `__main__` run as `__main__` (so `__spec__.name == '__main__'`, as in CPython).
            let entry = std::path::absolute(path)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| path.to_owned());
            vm.insert_sys_path(vm.new_pyobj(entry))?;
            call_glue_args(vm, "_procpy_main", "run_path_entry", vec![])
        }
        Main::File(path) => {
            let dir = std::path::Path::new(path).parent().and_then(|p| p.to_str()).unwrap_or("");
            let dir = if dir.is_empty() { "." } else { dir };
            let abs = std::fs::canonicalize(dir)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| dir.to_owned());
            vm.insert_sys_path(vm.new_pyobj(abs))?;
            // CPython 3.9+ gives the main script an absolute `__file__` (and tracebacks show it).
            let file = std::path::absolute(path)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| path.to_owned());
            if file.ends_with(".pyc") {
                // Compiled bytecode, checked for procpy's own magic number (a clear error for
                // CPython's .pyc files).
                return run_pyc(vm, scope, &file);
            }
            vm.run_any_file(scope, &file)
        }
        Main::Source(code) => {
            vm.insert_sys_path(vm.new_pyobj(""))?;
            vm.run_string(scope, code, "<string>".to_owned()).map(drop)
        }
        Main::Module(name) => {
            let cwd = std::env::current_dir()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            vm.insert_sys_path(vm.new_pyobj(cwd))?;
            vm.run_module(name)
        }
    }
}

/// A directory or a zip archive: what python3 runs through its `__main__` module.
fn is_path_entry(path: &str) -> bool {
    use std::io::Read;
    let p = std::path::Path::new(path);
    if p.is_dir() {
        return true;
    }
    // As zipfile.is_zipfile: an end-of-central-directory record in the last 22 bytes plus
    // room for the archive comment, so an archive with a prefix (a zipapp's shebang) counts.
    use std::io::{Seek, SeekFrom};
    const EOCD: &[u8] = b"PK\x05\x06";
    const EOCD_LEN: u64 = 22;
    let tail = (|| {
        let mut f = std::fs::File::open(p)?;
        let len = f.metadata()?.len();
        let start = len.saturating_sub(EOCD_LEN + u64::from(u16::MAX));
        f.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::new();
        f.read_to_end(&mut tail)?;
        Ok::<_, std::io::Error>(tail)
    })();
    let Ok(tail) = tail else {
        return false;
    };
    // The last record whose comment ends exactly at the end of the file (the comment may
    // itself hold the signature, so search backwards and check the length).
    (0..tail.len().saturating_sub(EOCD_LEN as usize - 1)).rev().any(|i| {
        tail[i..].starts_with(EOCD) && {
            let comment = u16::from_le_bytes([tail[i + 20], tail[i + 21]]) as usize;
            i + EOCD_LEN as usize + comment == tail.len()
        }
    })
}

/// Run a .pyc file as `__main__`, with `__file__` set while it runs (as `run_any_file` does).
fn run_pyc(vm: &VirtualMachine, scope: Scope, file: &str) -> PyResult<()> {
    let globals = scope.globals.clone();
    globals.set_item("__file__", vm.new_pyobj(file), vm)?;
    globals.set_item("__cached__", vm.ctx.none(), vm)?;
    let res = call_glue_args(
        vm,
        "_procpy_main",
        "run_pyc",
        vec![vm.new_pyobj(file), globals.clone().into()],
    );
    let _ = globals.del_item("__file__", vm);
    let _ = globals.del_item("__cached__", vm);
    res
}

fn call_glue(vm: &VirtualMachine, module: &str, func: &str) -> PyResult<()> {
    call_glue_args(vm, module, func, vec![])
}

fn call_glue_args(
    vm: &VirtualMachine,
    module: &str,
    func: &str,
    args: Vec<rustpython_vm::PyObjectRef>,
) -> PyResult<()> {
    let name = vm.ctx.new_str(module);
    vm.import(&*name, 0)?;
    let f = crate::codec::resolve_global(vm, module, func)?;
    f.call(args, vm).map(drop)
}
