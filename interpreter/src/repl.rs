//! The interactive prompt: `procpy` with no script on a terminal, and `procpy -i` after a script.
//!
//! Like python3's: a banner, `sys.ps1`/`sys.ps2` (their `str()`), line editing and history
//! (rustyline; the history is kept in `~/.procpy_history`; piped input gets neither, and the
//! prompts go to stderr), `...` continuation until a block
//! is closed by an empty line, expression results through `sys.displayhook`, exceptions
//! printed with the prompt coming back, Ctrl-C dropping the line, Ctrl-D / `exit()` leaving.
//! Whether more input is needed: open brackets, a triple-quoted string or a trailing backslash
//! continue the line (it runs once whole); an unfinished suite (the compiler's
//! `_IncompleteInputError`, as in RustPython's own shell) or a decorator continues the block,
//! which runs at the first empty line.

use rustpython_vm::builtins::PyBaseExceptionRef;
use rustpython_vm::compiler;
use rustpython_vm::scope::Scope;
use rustpython_vm::{AsObject, PyResult, VirtualMachine};
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{Cmd, Config, Editor, EventHandler, KeyCode, KeyEvent, Modifiers};

/// How the prompt starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PromptOptions {
    /// Print the banner (python3 prints it unless `-q`, and not after `-i script`).
    pub banner: bool,
    /// Run the file `PYTHONSTARTUP` names first (python3: only for a bare interactive start).
    pub startup: bool,
}

/// What the input gathered so far amounts to.
enum Step {
    /// Compiled (and run, unless a block still waits for its closing empty line).
    Done(PyResult<()>),
    /// Complete statements, but inside a block: wait for the empty line.
    Wait,
    /// Unfinished line (open bracket, triple-quoted string): more lines, run as soon as whole.
    MoreLine,
    /// Unfinished suite (`def f():`): more lines until an empty one.
    MoreBlock,
}

fn feed(
    vm: &VirtualMachine,
    source: &str,
    scope: &Scope,
    empty_line: bool,
    in_block: bool,
) -> Step {
    match vm.compile(source, compiler::Mode::Single, "<stdin>".to_owned()) {
        Ok(code) if empty_line || !in_block => {
            Step::Done(vm.run_code_obj(code, scope.clone()).map(drop))
        }
        Ok(_) => Step::Wait,
        Err(err) => {
            // Inside brackets only an error at the end of the input means "more to come":
            // `foo(1 2` is wrong already.
            let eof_in_bracket =
                matches!(&err, compiler::CompileError::Parse(p) if p.is_unclosed_bracket);
            if unfinished_line(source, eof_in_bracket) {
                return Step::MoreLine;
            }
            if !empty_line && pending_decorator(source) {
                return Step::MoreBlock;
            }
            let exc = vm.new_syntax_error_maybe_incomplete(&err, Some(source), !empty_line);
            if !empty_line && exc.fast_isinstance(vm.ctx.exceptions.incomplete_input_error) {
                Step::MoreBlock
            } else {
                Step::Done(Err(exc))
            }
        }
    }
}

/// Does the source end inside brackets (only if the parser stopped at the end of the input,
/// `eof_in_bracket`), a triple-quoted string or after a backslash? (The parser's errors for
/// the last two vary with what follows the opening; counting is plain.)
fn unfinished_line(source: &str, eof_in_bracket: bool) -> bool {
    if source.trim_end_matches('\n').ends_with('\\') {
        return true;
    }
    let b = source.as_bytes();
    let (mut i, mut depth) = (0, 0i32);
    while i < b.len() {
        match b[i] {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            q @ (b'\'' | b'"') => {
                let triple = b.get(i..i + 3) == Some(&[q, q, q][..]);
                let close: &[u8] = if triple { &[q, q, q] } else { &[q] };
                i += close.len();
                loop {
                    if i >= b.len() {
                        return triple;
                    }
                    if b[i] == b'\\' {
                        i += 2;
                    } else if !triple && b[i] == b'\n' {
                        break;
                    } else if b[i..].starts_with(close) {
                        i += close.len();
                        break;
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    depth > 0 && eof_in_bracket
}

/// A decorator line waits for what it decorates.
fn pending_decorator(source: &str) -> bool {
    source
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| l.trim_start().starts_with('@'))
}

fn flush_stdio(vm: &VirtualMachine) {
    for name in ["stdout", "stderr"] {
        if let Ok(stream) = vm.sys_module.get_attr(name, vm) {
            let _ = vm.call_method(&stream, "flush", ());
        }
    }
}

/// `str(sys.ps1)` or `str(sys.ps2)`; python3 shows an empty prompt when that fails.
fn prompt(vm: &VirtualMachine, name: &'static str) -> String {
    vm.sys_module
        .get_attr(name, vm)
        .and_then(|p| p.str(vm))
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// python3 sets `sys.ps1`/`sys.ps2` only when it goes interactive; a script may have set them.
fn default_prompts(vm: &VirtualMachine) -> PyResult<()> {
    for (name, value) in [("ps1", ">>> "), ("ps2", "... ")] {
        if vm.sys_module.get_attr(name, vm).is_err() {
            vm.sys_module.set_attr(name, vm.ctx.new_str(value), vm)?;
        }
    }
    Ok(())
}

fn banner(vm: &VirtualMachine) -> String {
    let version = vm
        .sys_module
        .get_attr("version_info", vm)
        .and_then(|v| {
            let major = v.get_attr("major", vm)?.str(vm)?;
            let minor = v.get_attr("minor", vm)?.str(vm)?;
            Ok(format!("{major}.{minor}"))
        })
        .unwrap_or_else(|_| "3".to_owned());
    format!(
        "procpy {} on RustPython 0.5.0 (Python {version} language), {}\n\
         Type \"help\", \"copyright\", \"credits\" or \"license\" for more information.",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS
    )
}

/// `PYTHONSTARTUP`: run in `__main__` before the first prompt; its errors are printed.
fn run_startup(vm: &VirtualMachine, scope: &Scope) {
    let Some(path) = std::env::var_os("PYTHONSTARTUP").filter(|p| !p.is_empty()) else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    match std::fs::read_to_string(&path) {
        Ok(source) => {
            if let Err(exc) = vm.run_string(scope.clone(), &source, path) {
                vm.print_exception(exc);
            }
        }
        Err(e) => {
            // python3's wording.
            eprintln!(
                "Could not open PYTHONSTARTUP\nFileNotFoundError: [Errno {}] {e}: '{path}'",
                e.raw_os_error().unwrap_or(0)
            );
        }
    }
}

fn history_path() -> Option<std::path::PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| std::path::Path::new(&h).join(".procpy_history"))
}

/// Run the prompt in `scope` (the `__main__` module's) until Ctrl-D, `exit()` or an uncaught
/// `SystemExit`, which is returned for the caller's usual exit (atexit, children joined).
pub fn run_prompt(vm: &VirtualMachine, scope: Scope, opts: PromptOptions) -> PyResult<()> {
    default_prompts(vm)?;
    if opts.banner {
        eprintln!("{}", banner(vm));
    }
    if opts.startup {
        run_startup(vm, &scope);
    }
    let config = Config::builder()
        .auto_add_history(false)
        .max_history_size(10_000)
        .map_err(|e| vm.new_runtime_error(format!("line editor: {e}")))?
        // A pasted block arrives line by line, as typed.
        .bracketed_paste(false)
        .build();
    let ed = keep_sigint(|| Editor::<(), DefaultHistory>::with_config(config));
    let mut ed = ed.map_err(|e| vm.new_os_error(format!("cannot start the line editor: {e}")))?;
    // Tab indents (there is no completion).
    ed.bind_sequence(
        KeyEvent(KeyCode::Tab, Modifiers::NONE),
        EventHandler::Simple(Cmd::Insert(1, "    ".into())),
    );
    // `-i` with piped input: python3 keeps no history then, and prompts on stderr.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let history = history_path().filter(|_| terminal);
    if let Some(h) = &history {
        // A first run has no file yet.
        let _ = ed.load_history(h);
    }
    let mut input = if terminal { Input::Editor(&mut ed) } else { Input::Plain };
    let result = prompt_loop(vm, &scope, &mut input);
    if let Some(h) = &history {
        // A read-only home only loses the history.
        let _ = ed.save_history(h);
    }
    result
}

/// Run `f` (which makes the line editor) and put back the SIGINT action it replaced. rustyline
/// takes SIGINT for as long as the editor lives, so Ctrl-C would no longer interrupt running
/// code with `KeyboardInterrupt`; while it reads a line the terminal is raw and Ctrl-C is a
/// key, not a signal, so it does not need the signal.
fn keep_sigint<T>(f: impl FnOnce() -> T) -> T {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: only reads the current action (nix has no read-only call): SIG_IGN is installed
    // for an instant and the previous action goes straight back.
    let ours = unsafe { sigaction(Signal::SIGINT, &ignore) };
    if let Ok(ours) = &ours {
        // SAFETY: puts back exactly the action that was installed (the interpreter's handler).
        let _ = unsafe { sigaction(Signal::SIGINT, ours) };
    }
    let made = f();
    if let Ok(ours) = &ours {
        // SAFETY: as above: the interpreter's own handler, replaced by the editor's.
        let _ = unsafe { sigaction(Signal::SIGINT, ours) };
    }
    made
}

/// Where the prompt's lines come from.
enum Input<'a> {
    /// A terminal: line editing and history.
    Editor(&'a mut Editor<(), DefaultHistory>),
    /// Anything else: `sys.stdin`'s lines (so `input()` in the code shares its buffer), the
    /// prompt on stderr, as python3 does.
    Plain,
}

impl Input<'_> {
    fn readline(&mut self, vm: &VirtualMachine, ps: &str) -> Result<String, ReadlineError> {
        if let Input::Editor(ed) = self {
            return ed.readline(ps);
        }
        eprint!("{ps}");
        let _ = std::io::Write::flush(&mut std::io::stderr());
        let line = vm
            .sys_module
            .get_attr("stdin", vm)
            .and_then(|stdin| vm.call_method(&stdin, "readline", ()))
            .and_then(|line| line.str(vm))
            .map(|line| line.to_string());
        match line {
            Ok(line) if line.is_empty() => Err(ReadlineError::Eof),
            Ok(line) => Ok(line.trim_end_matches(['\n', '\r']).to_owned()),
            Err(exc) if exc.fast_isinstance(vm.ctx.exceptions.keyboard_interrupt) => {
                Err(ReadlineError::Interrupted)
            }
            Err(exc) => {
                let msg = exc.as_object().str(vm).map(|s| s.to_string()).unwrap_or_default();
                Err(ReadlineError::Io(std::io::Error::other(msg)))
            }
        }
    }

    fn add_history_entry(&mut self, line: &str) {
        if let Input::Editor(ed) = self {
            let _ = ed.add_history_entry(line);
        }
    }
}

fn prompt_loop(vm: &VirtualMachine, scope: &Scope, ed: &mut Input<'_>) -> PyResult<()> {
    let mut source = String::new();
    let mut in_block = false;
    let mut in_line = false;
    loop {
        flush_stdio(vm);
        let ps = prompt(vm, if in_block || in_line { "ps2" } else { "ps1" });
        let outcome = match ed.readline(vm, &ps) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    ed.add_history_entry(line.trim_end());
                }
                let empty_line = line.trim().is_empty();
                source.push_str(&line);
                source.push('\n');
                in_line = false;
                match feed(vm, &source, scope, empty_line, in_block) {
                    Step::Done(res) => {
                        source.clear();
                        in_block = false;
                        res
                    }
                    Step::Wait => Ok(()),
                    Step::MoreLine => {
                        in_line = true;
                        Ok(())
                    }
                    Step::MoreBlock => {
                        in_block = true;
                        Ok(())
                    }
                }
            }
            Err(ReadlineError::Interrupted) => {
                source.clear();
                in_block = false;
                in_line = false;
                Err(vm.new_exception_empty(vm.ctx.exceptions.keyboard_interrupt.to_owned()))
            }
            Err(ReadlineError::Eof) => {
                // python3 ends the prompt's line before leaving (where the prompt is).
                match ed {
                    Input::Editor(_) => println!(),
                    Input::Plain => eprintln!(),
                }
                return Ok(());
            }
            Err(ReadlineError::Signal(_)) => continue,
            Err(e) => {
                eprintln!("procpy: cannot read the prompt's input: {e}");
                return Ok(());
            }
        };
        if let Err(exc) = outcome {
            if exc.fast_isinstance(vm.ctx.exceptions.system_exit) {
                return Err(exc);
            }
            remember_last(vm, &exc);
            vm.print_exception(exc);
        }
    }
}

/// `sys.last_type`/`last_value`/`last_traceback`, for `pdb.pm()` as in python3.
fn remember_last(vm: &VirtualMachine, exc: &PyBaseExceptionRef) {
    let _ = vm.sys_module.set_attr("last_type", exc.class().to_owned(), vm);
    let _ = vm.sys_module.set_attr("last_value", exc.clone(), vm);
    let tb = exc.__traceback__().map(|t| t.into()).unwrap_or_else(|| vm.ctx.none());
    let _ = vm.sys_module.set_attr("last_traceback", tb, vm);
}
