//! The VM-free half of `_procpy_cluster` (issue 14, the pool on a Redis cluster): how a Redis
//! URL is shown (password masked), the payload MAC, the shared key's sources, and the host
//! name. The Redis client itself and its Python face are in `native/cluster.rs`.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path;

/// The environment variable holding the shared key itself (UTF-8), set by a user.
pub const KEY_ENV: &str = "PROCPY_CLUSTER_KEY";

/// `url` with its password replaced by `***`, for messages: `redis://user:***@host:6379/0`.
/// A `password=`/`pass=` query parameter (unix socket URLs) is masked too. Anything that does
/// not parse is shown as it is, minus the part before an `@`, which might be a secret.
pub fn mask_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some(parts) => parts,
        None => return url.to_owned(),
    };
    // The authority ends at the first '/', '?' or '#'; userinfo ends at its last '@'.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            // A lone name is a user name to Redis (the crate and redis-py agree).
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k == "password" || k == "pass" => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
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

/// The shared key in a key file: its bytes, minus one trailing newline (`\n` or `\r\n`) that
/// an editor or `echo` adds.
pub fn key_from_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut key = std::fs::read(path)?;
    if key.ends_with(b"\n") {
        key.pop();
        if key.ends_with(b"\r") {
            key.pop();
        }
    }
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
        std::fs::write(&f, b"secret\n\n").unwrap();
        assert_eq!(key_from_file(&f).unwrap(), b"secret\n");
        std::fs::write(&f, b"secret\r\n").unwrap();
        assert_eq!(key_from_file(&f).unwrap(), b"secret");
        std::fs::write(&f, b"secret").unwrap();
        assert_eq!(key_from_file(&f).unwrap(), b"secret");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(key_from_file(&f).is_err());
    }

    #[test]
    fn the_host_name_is_the_kernels() {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(hostname(), kernel.trim_end());
    }
}
