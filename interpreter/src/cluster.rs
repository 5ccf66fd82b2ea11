//! The VM-free half of `_procpy_cluster` (issue 14, the pool on a Redis cluster): how a Redis
//! URL is shown (password masked), the payload MAC, the shared key's sources, and the host
//! name. The Redis client itself and its Python face are in `native/cluster.rs`.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path;

/// The environment variable holding the shared key itself (UTF-8), set by a user.
pub const KEY_ENV: &str = "PROCPY_CLUSTER_KEY";

/// `url` with its password replaced by `***`, for messages: `redis://user:***@host:6379/0`.
/// A `password=`/`pass=` query parameter (unix socket URLs) is masked too. Whatever the URL
/// looks like, everything between the scheme and the last `@` is hidden: a password may hold
/// `/`, `?` or `#`, so the authority cannot be trusted to end at the first of them.
pub fn mask_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some(parts) => parts,
        None => match url.rsplit_once('@') {
            // Not a URL at all: keep nothing that might be a secret.
            Some((_, host)) => return format!("***@{host}"),
            None => return mask_query(url),
        },
    };
    let masked = match rest.rsplit_once('@') {
        Some((userinfo, tail)) => {
            // `user:password@`: the user name is no secret when the userinfo is well formed.
            match userinfo.split_once(':') {
                Some((user, _)) if !user.contains(['/', '?', '#']) => {
                    format!("{user}:***@{tail}")
                }
                // A lone name is a user name to Redis (the crate and redis-py agree).
                None if !userinfo.contains(['/', '?', '#']) => format!("{userinfo}@{tail}"),
                _ => format!("***@{tail}"),
            }
        }
        None => rest.to_owned(),
    };
    format!("{scheme}://{}", mask_query(&masked))
}

/// `password=`/`pass=` query values (any case, percent-encoded names too) replaced by `***`.
fn mask_query(s: &str) -> String {
    let Some((path, query)) = s.split_once('?') else {
        return s.to_owned();
    };
    let query: Vec<String> = query
        .split(['&', ';'])
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) => {
                let name = k.to_ascii_lowercase().replace("%73", "s").replace("%61", "a");
                if name.starts_with("pass") || name.contains("password") {
                    format!("{k}=***")
                } else {
                    kv.to_owned()
                }
            }
            None => kv.to_owned(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

/// Whether `url` asks for TLS, which this build does not have (the `redis` crate is built
/// without a TLS stack, so no C toolchain or extra crypto is needed).
pub fn wants_tls(url: &str) -> bool {
    let lower = url.trim_start().to_ascii_lowercase();
    lower.starts_with("rediss://") || lower.starts_with("valkeys://")
}

fn mac_over(key: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
    // Cannot fail: HMAC accepts keys of any length (only fixed-key MACs return InvalidLength).
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any length");
    for part in parts {
        // The length prefix keeps ("ab", "c") and ("a", "bc") apart.
        mac.update(&(part.len() as u64).to_le_bytes());
        mac.update(part);
    }
    mac
}

/// HMAC-SHA256 under `key` over `parts`, each prefixed by its length (u64, little-endian).
pub fn sign(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    mac_over(key, parts).finalize().into_bytes().into()
}

/// Whether `mac` is [`sign`]`(key, parts)`, compared in constant time.
pub fn verify(key: &[u8], mac: &[u8], parts: &[&[u8]]) -> bool {
    mac_over(key, parts).verify_slice(mac).is_ok()
}

/// The shortest shared key taken: shorter keys can be guessed, and anyone who can write to
/// the Redis server and forge a MAC runs code on the workers.
pub const MIN_KEY_LEN: usize = 16;
/// The longest key file read (a key is a few dozen bytes; this stops `/dev/zero`).
pub const MAX_KEY_LEN: u64 = 4096;

/// How to make a key, for messages.
pub const MAKE_KEY_HINT: &str = "make one with `head -c 32 /dev/urandom | base64 > FILE`";

/// Whether `key` is long enough; else the message saying why not, naming `source`.
pub fn check_key(key: &[u8], source: &str) -> Result<(), String> {
    if key.len() < MIN_KEY_LEN {
        return Err(format!(
            "the cluster key from {source} has {} bytes; it needs at least {MIN_KEY_LEN} \
             ({MAKE_KEY_HINT})",
            key.len()
        ));
    }
    Ok(())
}

/// The shared key in a key file: its bytes, minus one trailing newline (`\n` or `\r\n`) that
/// an editor or `echo` adds. Only a regular file of at most [`MAX_KEY_LEN`] bytes is read
/// (not a FIFO that never ends, nor `/dev/zero`), and the key must have [`MIN_KEY_LEN`] bytes.
pub fn key_from_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidData, msg);
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(invalid(format!("not a regular file ({MAKE_KEY_HINT})")));
    }
    let mut key = Vec::new();
    std::fs::File::open(path)?.take(MAX_KEY_LEN + 1).read_to_end(&mut key)?;
    if key.len() as u64 > MAX_KEY_LEN {
        return Err(invalid(format!("longer than {MAX_KEY_LEN} bytes: is it really a key?")));
    }
    if key.ends_with(b"\n") {
        key.pop();
        if key.ends_with(b"\r") {
            key.pop();
        }
    }
    check_key(&key, &path.display().to_string()).map_err(invalid)?;
    Ok(key)
}

/// This machine's host name (lossy UTF-8); `localhost` if the system will not say.
pub fn hostname() -> String {
    // libc rather than nix's `hostname` feature: a new nix feature rebuilds the whole VM.
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call; the kernel
    // writes at most `len` bytes.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "localhost".to_owned();
    }
    // Truncation may leave no NUL: then the whole buffer is the name.
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match &buf[..end] {
        [] => "localhost".to_owned(),
        name => String::from_utf8_lossy(name).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_masked() {
        assert_eq!(mask_url("redis://u:secret@h:6379/0"), "redis://u:***@h:6379/0");
        assert_eq!(mask_url("redis://:secret@h:6379"), "redis://:***@h:6379");
        assert_eq!(mask_url("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(mask_url("redis://user@h"), "redis://user@h");
        assert_eq!(mask_url("redis://u:p@ss@h/1"), "redis://u:***@h/1");
        assert_eq!(
            mask_url("redis+unix:///run/r.sock?db=1&pass=secret"),
            "redis+unix:///run/r.sock?db=1&pass=***"
        );
        assert_eq!(mask_url("nonsense"), "nonsense");
        // Passwords holding the characters that end an authority, and URLs that do not parse.
        assert_eq!(mask_url("redis://u:pa/ss@h:6379/0"), "redis://u:***@h:6379/0");
        assert_eq!(mask_url("redis://:s3cr#t@h"), "redis://:***@h");
        assert_eq!(mask_url("redis://:se?cret@h/0"), "redis://:***@h/0");
        assert_eq!(mask_url("redis:/:secret@h"), "***@h");
        assert_eq!(mask_url("redis//:secret@h:6379"), "***@h:6379");
        assert_eq!(
            mask_url("redis+unix:///s.sock?pa%73s=secret"),
            "redis+unix:///s.sock?pa%73s=***"
        );
        assert_eq!(mask_url("redis://h/0?PASSWORD=secret"), "redis://h/0?PASSWORD=***");
        for url in ["redis://u:pa/ss@h", "redis://:a@b@h", "x://:pw?@h?password=pw2"] {
            assert!(!mask_url(url).contains("pa/ss") && !mask_url(url).contains("pw"), "{url}");
        }
    }

    #[test]
    fn tls_urls_are_recognised() {
        assert!(wants_tls("rediss://h:6380"));
        assert!(wants_tls("REDISS://h"));
        assert!(!wants_tls("redis://h"));
    }

    #[test]
    fn the_mac_frames_its_parts() {
        let k = b"key";
        let m = sign(k, &[b"ab", b"c"]);
        assert!(verify(k, &m, &[b"ab", b"c"]));
        assert!(!verify(k, &m, &[b"a", b"bc"]));
        assert!(!verify(b"other", &m, &[b"ab", b"c"]));
        let mut flipped = m;
        flipped[5] ^= 1;
        assert!(!verify(k, &flipped, &[b"ab", b"c"]));
        assert!(!verify(k, &m[..31], &[b"ab", b"c"]));
    }

    #[test]
    fn a_key_file_loses_one_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("procpy-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("k");
        std::fs::write(&f, b"a-long-enough-secret\n\n").unwrap();
        assert_eq!(key_from_file(&f).unwrap(), b"a-long-enough-secret\n");
        std::fs::write(&f, b"a-long-enough-secret\r\n").unwrap();
        assert_eq!(key_from_file(&f).unwrap(), b"a-long-enough-secret");
        std::fs::write(&f, b"a-long-enough-secret").unwrap();
        assert_eq!(key_from_file(&f).unwrap(), b"a-long-enough-secret");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(key_from_file(&f).is_err());
    }

    #[test]
    fn short_keys_and_odd_key_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("procpy-key-odd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("k");
        for short in [&b""[..], b"\n", b"fifteen-bytes!!\n"] {
            std::fs::write(&f, short).unwrap();
            let e = key_from_file(&f).unwrap_err().to_string();
            assert!(e.contains("at least 16") && e.contains("urandom"), "{e}");
        }
        std::fs::write(&f, vec![b'k'; 5000]).unwrap();
        assert!(key_from_file(&f).unwrap_err().to_string().contains("longer than 4096"));
        // A directory (or a FIFO, /dev/zero) is not read at all.
        assert!(key_from_file(&dir).unwrap_err().to_string().contains("not a regular file"));
        assert!(key_from_file(Path::new("/dev/zero")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_host_name_is_the_kernels() {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(hostname(), kernel.trim_end());
    }
}
