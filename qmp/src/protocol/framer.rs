//! Cuts a QMP byte stream into messages, as QEMU's JSON streamer does.
//!
//! A message is one JSON value: an object or array ends when its braces and brackets
//! balance (counted apart, outside strings, as qobject/json-streamer.c does), a string
//! when its closing quote comes, a bare number or keyword at the first byte that cannot
//! continue it. Whitespace between messages is skipped, so messages may be sent back to
//! back, one per line, or split anywhere. Parsing proper is serde_json's job afterwards.
//!
//! Limits and recovery (each error is one error reply; the session goes on):
//! - a message longer than [`MAX_MESSAGE_BYTES`] or nested deeper than [`MAX_NESTING`]
//!   is answered at once and the rest of it is skipped up to where it balances;
//! - a byte that cannot appear outside a string (a control character, a byte of 0x80 or
//!   above), or an unescaped control character inside one, is answered ("stray") and
//!   the message it is in is skipped up to where it balances;
//! - a 0xFE or 0xFF byte anywhere (never valid UTF-8; qemu-ga clients send 0xFF to
//!   resynchronise) is answered and drops whatever was partially read, so a client can
//!   always get back in step, even out of an unterminated string.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// The longest message accepted, in bytes. libxl's longest is about 150 bytes; QEMU
/// allows 64 MiB, far more than a 16 MiB stub domain should buffer.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The deepest nesting of objects and arrays accepted (QEMU: 1024). Below serde_json's
/// own recursion limit of 128.
pub const MAX_NESTING: usize = 64;

/// What the framer found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// the bytes of one complete JSON value
    Message(Vec<u8>),
    /// input that is not JSON: the description for a GenericError reply
    Error(String),
}

#[derive(Debug, Default)]
pub(crate) struct Framer {
    buffer: Vec<u8>,
    braces: usize,
    brackets: usize,
    /// a message has started
    active: bool,
    /// the message is a bare number or keyword
    scalar: bool,
    in_string: bool,
    escaped: bool,
    /// the message was already answered with an error; skip to its end
    discarding: bool,
}

/// How QEMU quotes a stray byte: printable ASCII as is, anything else as `\xNN`.
fn stray(byte: u8) -> String {
    if byte.is_ascii_graphic() || byte == b' ' {
        format!("JSON parse error, stray '{}'", char::from(byte))
    } else {
        format!("JSON parse error, stray '\\x{byte:02x}'")
    }
}

fn is_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r' | b'\n')
}

/// Bytes a bare number or keyword (or a mistyped token) is made of.
fn is_scalar(byte: u8) -> bool {
    byte.is_ascii_graphic() && !matches!(byte, b'{' | b'}' | b'[' | b']' | b',' | b':' | b'"')
}

impl Framer {
    pub(crate) fn new() -> Framer {
        Framer::default()
    }

    /// Whether part of a message has been read.
    pub(crate) fn is_partial(&self) -> bool {
        self.active
    }

    fn reset(&mut self) {
        *self = Framer { buffer: core::mem::take(&mut self.buffer), ..Framer::default() };
        self.buffer.clear();
    }

    fn fail(&mut self, description: String, out: &mut Vec<Frame>) {
        if !self.discarding {
            out.push(Frame::Error(description));
            self.discarding = true;
            self.buffer.clear();
        }
    }

    fn append(&mut self, byte: u8, out: &mut Vec<Frame>) {
        if self.discarding {
            return;
        }
        if self.buffer.len() >= MAX_MESSAGE_BYTES {
            self.fail(String::from("JSON token size limit exceeded"), out);
            return;
        }
        self.buffer.push(byte);
    }

    fn complete(&mut self, out: &mut Vec<Frame>) {
        if !self.discarding {
            out.push(Frame::Message(core::mem::take(&mut self.buffer)));
        }
        self.reset();
    }

    /// Takes one byte; complete messages and errors go to `out`, in stream order.
    pub(crate) fn push(&mut self, byte: u8, out: &mut Vec<Frame>) {
        if byte >= 0xfe {
            out.push(Frame::Error(stray(byte)));
            self.reset();
            return;
        }
        if !self.active {
            match byte {
                _ if is_whitespace(byte) => return,
                b'{' | b'[' | b'"' => self.active = true,
                b'}' | b']' | b',' | b':' => {
                    out.push(Frame::Error(String::from("JSON parse error, expecting value")));
                    return;
                }
                _ if is_scalar(byte) => {
                    self.active = true;
                    self.scalar = true;
                }
                _ => {
                    out.push(Frame::Error(stray(byte)));
                    return;
                }
            }
        }
        if self.scalar {
            if is_scalar(byte) {
                self.append(byte, out);
            } else {
                self.complete(out);
                self.push(byte, out);
            }
            return;
        }
        if self.in_string {
            if byte < 0x20 {
                // JSON wants it escaped; the quotes still say where the string ends
                self.fail(stray(byte), out);
            }
            self.append(byte, out);
            if self.escaped {
                self.escaped = false;
            } else if byte == b'\\' {
                self.escaped = true;
            } else if byte == b'"' {
                self.in_string = false;
                if self.braces == 0 && self.brackets == 0 {
                    self.complete(out);
                }
            }
            return;
        }
        match byte {
            b'"' => self.in_string = true,
            b'{' => self.braces = self.braces.saturating_add(1),
            b'[' => self.brackets = self.brackets.saturating_add(1),
            b'}' => self.braces = self.braces.saturating_sub(1),
            b']' => self.brackets = self.brackets.saturating_sub(1),
            _ if is_whitespace(byte) || byte.is_ascii_graphic() => {}
            _ => {
                self.fail(stray(byte), out);
                return;
            }
        }
        self.append(byte, out);
        if self.braces.saturating_add(self.brackets) > MAX_NESTING {
            self.fail(String::from("JSON nesting depth limit exceeded"), out);
        }
        if matches!(byte, b'}' | b']') && self.braces == 0 && self.brackets == 0 {
            self.complete(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn frames(input: &[u8]) -> Vec<Frame> {
        let mut framer = Framer::new();
        let mut out = Vec::new();
        for &byte in input {
            framer.push(byte, &mut out);
        }
        out
    }

    fn message(text: &str) -> Frame {
        Frame::Message(text.as_bytes().to_vec())
    }

    #[test]
    fn splits_merged_messages_and_skips_whitespace() {
        assert_eq!(
            frames(b" {\"a\":\"}{\"}{\"b\":[1,{}]}\r\n[2] \"x\\\"y\" 42 true\n"),
            vec![
                message("{\"a\":\"}{\"}"),
                message("{\"b\":[1,{}]}"),
                message("[2]"),
                message("\"x\\\"y\""),
                message("42"),
                message("true"),
            ]
        );
    }

    #[test]
    fn scalar_ends_at_a_structural_byte() {
        assert_eq!(frames(b"12{}"), vec![message("12"), message("{}")]);
        assert_eq!(frames(b"nul}"), vec![message("nul"), Frame::Error("JSON parse error, expecting value".into())]);
    }

    #[test]
    fn braces_and_brackets_balance_apart() {
        // `{]}` is one (bad) message, as in QEMU, not two.
        assert_eq!(frames(b"{]}"), vec![message("{]}")]);
    }

    #[test]
    fn oversized_message_is_answered_once_and_skipped() {
        let mut input = b"{\"execute\":\"".to_vec();
        input.extend(core::iter::repeat_n(b'a', MAX_MESSAGE_BYTES));
        input.extend(b"\"}{}");
        assert_eq!(frames(&input), vec![Frame::Error("JSON token size limit exceeded".into()), message("{}")]);
    }

    #[test]
    fn deep_nesting_is_answered_once_and_skipped() {
        let mut input = vec![b'['; MAX_NESTING + 10];
        input.extend(vec![b']'; MAX_NESTING + 10]);
        input.extend(b"{}");
        assert_eq!(frames(&input), vec![Frame::Error("JSON nesting depth limit exceeded".into()), message("{}")]);
        let mut input = vec![b'['; MAX_NESTING];
        input.extend(vec![b']'; MAX_NESTING]);
        assert_eq!(frames(&input).len(), 1);
        assert!(matches!(frames(&input)[0], Frame::Message(_)));
    }

    #[test]
    fn stray_bytes_and_resynchronisation() {
        assert_eq!(frames(b"\x01{}"), vec![Frame::Error("JSON parse error, stray '\\x01'".into()), message("{}")]);
        // a stray byte inside an object costs that object only
        assert_eq!(
            frames(b"{\"a\":\x80}{}"),
            vec![Frame::Error("JSON parse error, stray '\\x80'".into()), message("{}")]
        );
        // an unescaped newline inside a string costs its message only
        assert_eq!(
            frames(b"{\"a\nb\"}{}"),
            vec![Frame::Error("JSON parse error, stray '\\x0a'".into()), message("{}")]
        );
        // 0xff anywhere drops the partial message, even an unterminated string
        assert_eq!(
            frames(b"{\"exec{}\xff{}"),
            vec![Frame::Error("JSON parse error, stray '\\xff'".into()), message("{}")]
        );
        assert_eq!(
            frames(b"{\"a\":[1,\xff{}"),
            vec![Frame::Error("JSON parse error, stray '\\xff'".into()), message("{}")]
        );
        // bytes of 0x80 and above are fine inside strings (serde checks the UTF-8)
        assert_eq!(frames("{\"é\":1}".as_bytes()), vec![message("{\"é\":1}")]);
    }
}
