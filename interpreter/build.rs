// The Python half of multiprocessing is frozen into the binary by `py_freeze!`, which cargo
// cannot see: rebuild when those sources change. The same sources are also kept as text (a
// module name -> source table in OUT_DIR), so tracebacks can show their lines.
use std::path::{Path, PathBuf};
use std::{env, fs, io};

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed=py");
    let dir = Path::new(&env::var("CARGO_MANIFEST_DIR").expect("set by cargo")).join("py");
    let mut modules = Vec::new();
    collect(&dir, "", &mut modules)?;
    modules.sort();
    let mut table = String::from("&[\n");
    for (name, path) in &modules {
        table.push_str(&format!("    ({name:?}, include_str!({:?})),\n", path.display()));
    }
    table.push_str("]\n");
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("frozen_sources.rs");
    fs::write(out, table)
}

/// Every `.py` under `dir` with the module name `py_freeze!` gives it (a package's
/// `__init__.py` is the package).
fn collect(dir: &Path, parent: &str, out: &mut Vec<(String, PathBuf)>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else { continue };
        let join = |s: &str| if parent.is_empty() { s.to_owned() } else { format!("{parent}.{s}") };
        if path.is_dir() {
            collect(&path, &join(file), out)?;
        } else if let Some(stem) = file.strip_suffix(".py") {
            let name = if stem == "__init__" { parent.to_owned() } else { join(stem) };
            out.push((name, path));
        }
    }
    Ok(())
}
