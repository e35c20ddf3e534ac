//! The domain's command line (start_info.cmd_line): space-separated words, each
//! either `flag` or `key=value`; the first occurrence of a key wins.

use core::fmt;

#[derive(Clone, Copy, Debug)]
pub struct Cmdline<'a>(&'a [u8]);

impl<'a> Cmdline<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Cmdline(bytes)
    }

    /// The words, in order.
    pub fn words(self) -> impl Iterator<Item = &'a [u8]> {
        self.0.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty())
    }

    /// The value of the first `key=value` word.
    pub fn value(self, key: &str) -> Option<&'a [u8]> {
        self.words().find_map(|w| {
            let eq = w.iter().position(|&b| b == b'=')?;
            (&w[..eq] == key.as_bytes()).then(|| &w[eq + 1..])
        })
    }

    /// The log level `loglevel=error|warn|info|debug|trace|off` names (default info).
    pub fn log_level(self) -> log::LevelFilter {
        match self.value("loglevel") {
            Some(b"off") => log::LevelFilter::Off,
            Some(b"error") => log::LevelFilter::Error,
            Some(b"warn") => log::LevelFilter::Warn,
            Some(b"debug") => log::LevelFilter::Debug,
            Some(b"trace") => log::LevelFilter::Trace,
            _ => log::LevelFilter::Info,
        }
    }

    /// The value of `key=N` as a number.
    pub fn number(self, key: &str) -> Option<u64> {
        core::str::from_utf8(self.value(key)?).ok()?.parse().ok()
    }

    /// The value of `key=A.B.C.D/N` as an IPv4 address and prefix length.
    pub fn ipv4_cidr(self, key: &str) -> Option<([u8; 4], u8)> {
        let text = core::str::from_utf8(self.value(key)?).ok()?;
        let (addr, prefix) = text.split_once('/')?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
        let mut octets = [0u8; 4];
        let mut parts = addr.split('.');
        for o in octets.iter_mut() {
            *o = parts.next()?.parse().ok()?;
        }
        parts.next().is_none().then_some((octets, prefix))
    }

    /// The whole line as text; a byte that is not UTF-8 shows as U+FFFD.
    pub fn display(self) -> LossyText<'a> {
        LossyText(self.0)
    }
}

/// Bytes printed as text without allocating.
pub struct LossyText<'a>(&'a [u8]);

impl fmt::Display for LossyText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            if !chunk.invalid().is_empty() {
                f.write_str("\u{fffd}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_skip_repeated_whitespace() {
        let c = Cmdline::new(b"  a=1\tb  c=x=y ");
        let words: Vec<&[u8]> = c.words().collect();
        assert_eq!(words, [&b"a=1"[..], b"b", b"c=x=y"]);
    }

    #[test]
    fn value_takes_first_key_and_splits_at_first_equals() {
        let c = Cmdline::new(b"selftest=panic selftest=none c=x=y flag");
        assert_eq!(c.value("selftest"), Some(&b"panic"[..]));
        assert_eq!(c.value("c"), Some(&b"x=y"[..]));
        assert_eq!(c.value("flag"), None);
        assert_eq!(c.value("self"), None);
        assert_eq!(Cmdline::new(b"").value("x"), None);
    }

    #[test]
    fn log_level_and_numbers() {
        assert_eq!(Cmdline::new(b"loglevel=debug").log_level(), log::LevelFilter::Debug);
        assert_eq!(Cmdline::new(b"loglevel=bogus").log_level(), log::LevelFilter::Info);
        assert_eq!(Cmdline::new(b"").log_level(), log::LevelFilter::Info);
        assert_eq!(Cmdline::new(b"rounds=10000 x=-1").number("rounds"), Some(10000));
        assert_eq!(Cmdline::new(b"x=-1").number("x"), None);
    }

    #[test]
    fn ipv4_cidr_parses_and_rejects() {
        let c = Cmdline::new(b"ip=192.0.2.2/24 bad=1.2.3/8 wide=1.2.3.4/33 long=1.2.3.4.5/8 big=256.1.1.1/8");
        assert_eq!(c.ipv4_cidr("ip"), Some(([192, 0, 2, 2], 24)));
        for key in ["bad", "wide", "long", "big", "missing"] {
            assert_eq!(c.ipv4_cidr(key), None, "{key}");
        }
    }

    #[test]
    fn display_replaces_invalid_utf8() {
        let c = Cmdline::new(b"ok \xff end");
        assert_eq!(format!("{}", c.display()), "ok \u{fffd} end");
    }
}
