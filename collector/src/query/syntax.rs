//! Where a refused PromQL query went wrong, said as Prometheus 2.42 says
//! it: `<line>:<column>: parse error: <what>`.
//!
//! The parser we use refuses a query with a bare message (often `invalid
//! promql query`). Only after it has refused one, this module reads the
//! query again with a small lexer and recognizer of its own that follow
//! Prometheus 2.42's lexer states and grammar, and reports the first token
//! they cannot accept, with Prometheus's wording. When the text is
//! well-formed and the refusal is about meaning (types, argument counts,
//! modifiers), the parser's message is kept and placed at the construct
//! it names, or else at the query's first token.
//!
//! Positions are Prometheus's: lines count from 1, columns are 1-based
//! byte offsets within the line. This module never decides whether a
//! query is valid; the parser does.

use std::fmt::Write as _;

/// What the recognizer found wrong, and the byte offset where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SyntaxError {
    /// Byte offset into the query of the offending token.
    pub offset: usize,
    /// Prometheus's wording, without the position.
    pub message: String,
}

/// The message for a query the parser refused with `parser_message`:
/// always starts with `line:col: parse error: `.
pub(super) fn locate(source: &str, parser_message: &str) -> String {
    let (offset, message) = match recognize(source) {
        Err(e) if e.message.is_empty() => {
            // Nested too deep to follow: the parser's message, at the
            // first token.
            let first = source.len() - source.trim_start().len();
            (first, prometheus_wording(parser_message))
        }
        Err(e) => (e.offset, e.message),
        Ok(parsed) => {
            let message = prometheus_wording(parser_message);
            (semantic_offset(source, &parsed, &message), message)
        }
    };
    with_position(source, offset, &message)
}

/// `message` prefixed with the position of byte `offset` in `source`.
pub(super) fn with_position(source: &str, offset: usize, message: &str) -> String {
    let offset = offset.min(source.len());
    let before = &source.as_bytes()[..offset];
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    let col = match before.iter().rposition(|&b| b == b'\n') {
        Some(nl) => offset - nl,
        None => offset + 1,
    };
    format!("{line}:{col}: parse error: {message}")
}

/// The parser's messages where they differ from Prometheus's in quoting
/// or in the names of types.
fn prometheus_wording(message: &str) -> String {
    if let Some(name) = message
        .strip_prefix("unknown function with name '")
        .and_then(|r| r.strip_suffix('\''))
    {
        return format!("unknown function with name {name:?}");
    }
    let mut out = message.to_string();
    if out == "vector matching only allowed between vectors" {
        return "vector matching only allowed between instant vectors".into();
    }
    if let Some(got) = out.strip_prefix(
        "unary expression only allowed on expressions of type scalar or vector, got: ",
    ) {
        let got = if got == "matrix" { "range vector" } else { got };
        return format!(
            "unary expression only allowed on expressions of type scalar or instant vector, got {got:?}"
        );
    }
    for marker in ["in call to function '", "in call to '", "set operator '"] {
        if let Some(at) = out.find(marker) {
            let name_start = at + marker.len();
            if let Some(len) = out[name_start..].find('\'') {
                let name = out[name_start..name_start + len].to_string();
                out = format!(
                    "{}{name:?}{}",
                    &out[..name_start - 1],
                    &out[name_start + len + 1..]
                );
            }
        }
    }
    if out.starts_with("expected type ") {
        out = out
            .split(' ')
            .map(|w| match w.trim_end_matches(',') {
                "matrix" => w.replacen("matrix", "range vector", 1),
                "vector" => w.replacen("vector", "instant vector", 1),
                _ => w.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ");
    }
    out
}

/// Where a well-formed query's refusal belongs: the call a message names
/// (`in call to "rate"`, `unknown function with name "f"`), the argument
/// of the type a type error names, the comparison of two scalars, the
/// matcher of a bad regex; else the query's first token.
fn semantic_offset(source: &str, parsed: &Parsed, message: &str) -> usize {
    let tokens = &parsed.tokens;
    let first = tokens.first().map_or(0, |t| t.start);
    let quoted_after = |marker: &str| -> Option<String> {
        let rest = &message[message.find(marker)? + marker.len()..];
        let rest = rest.strip_prefix(['"', '\''])?;
        Some(rest[..rest.find(['"', '\''])?].to_string())
    };
    let call = |name: &str| parsed.calls.iter().find(|c| tokens[c.name].text == name);
    if let Some(name) = quoted_after("in call to function ") {
        // A type error: Prometheus points at the argument, the first whose
        // type is not the one its place wants.
        let want = message
            .strip_prefix("expected type ")
            .and_then(|r| r.split(" in call to").next())
            .unwrap_or("");
        let got = message.rsplit(", got ").next().unwrap_or("");
        if let Some(c) = call(&name) {
            return wrong_argument(source, c, tokens, message, want, got)
                .unwrap_or(tokens[c.name].start);
        }
    }
    for marker in ["in call to ", "unknown function with name "] {
        if let Some(c) = quoted_after(marker).and_then(|name| call(&name)) {
            return tokens[c.name].start;
        }
    }
    if message.starts_with("comparisons between scalars must use BOOL modifier") {
        let comparisons: Vec<&Token> = tokens
            .windows(2)
            .filter(|w| is_comparison(&w[0]) && !w[1].is_word("bool"))
            .map(|w| &w[0])
            .collect();
        if let [op] = comparisons.as_slice() {
            return op.start;
        }
    }
    if let Some(re) = message.strip_prefix("illegal regex for ") {
        let matcher = parsed.regexes.iter().find(|(_, value)| {
            let v = tokens[*value].text;
            v.get(1..v.len() - 1) == Some(re)
        });
        if let Some((label, _)) = matcher {
            return tokens[*label].start;
        }
    }
    first
}

/// Where the argument of `call` that is not of type `want` (but `got`)
/// starts, which the parser did not say: each argument in turn is
/// replaced by a literal of type `want`, and the parser asked again; the
/// first whose replacement neither leaves `message` nor makes the parser
/// complain of a `want` in its place is the one. Else the argument whose
/// text shows type `got`, if only one does.
fn wrong_argument(
    source: &str,
    call: &CallSite,
    tokens: &[Token],
    message: &str,
    want: &str,
    got: &str,
) -> Option<usize> {
    let literal = match want {
        "scalar" => "1",
        "string" => "\"s\"",
        "instant vector" => "x",
        "range vector" => "x[1m]",
        _ => return None,
    };
    let end = |t: &Token| t.start + t.text.len();
    let call_start = tokens[call.name].start;
    let call_end = end(&tokens[call.close]);
    for (from, to) in &call.args {
        let (a, b) = (tokens[*from].start, end(&tokens[*to - 1]));
        let probe = format!(
            "{}{literal}{}",
            &source[call_start..a],
            &source[b..call_end]
        );
        let outcome = promql_parser::parser::parse(&super::dialect::raw_strings_quoted(&probe))
            .err()
            .map(|e| prometheus_wording(&e));
        match outcome {
            Some(m) if m == message || m.ends_with(&format!(", got {want}")) => {}
            _ => return Some(a),
        }
    }
    let shown: Vec<usize> = call
        .args
        .iter()
        .filter(|(from, to)| plain_type(&tokens[*from..*to]) == Some(got))
        .map(|(from, _)| tokens[*from].start)
        .collect();
    match shown.as_slice() {
        [only] => Some(*only),
        _ => None,
    }
}

/// The type of an argument whose text shows it: a string or number
/// literal, a bare selector, a selector with a range.
fn plain_type(arg: &[Token]) -> Option<&'static str> {
    match arg {
        [t] if t.kind == Kind::Str => return Some("string"),
        [t] if t.kind == Kind::Number => return Some("scalar"),
        [s, t] if s.kind == Kind::Op && t.kind == Kind::Number => return Some("scalar"),
        _ => {}
    }
    let mut i = 0;
    if arg.first()?.kind == Kind::Ident {
        i = 1;
    }
    if arg.get(i).is_some_and(|t| t.kind == Kind::LBrace) {
        i += arg[i..].iter().position(|t| t.kind == Kind::RBrace)? + 1;
    }
    if i == 0 {
        return None;
    }
    let kinds: Vec<Kind> = arg[i..].iter().map(|t| t.kind).collect();
    match kinds.as_slice() {
        [] => Some("instant vector"),
        [Kind::LBracket, Kind::Duration, Kind::RBracket] => Some("range vector"),
        _ => None,
    }
}

fn is_comparison(t: &Token) -> bool {
    t.kind == Kind::Op && matches!(t.text, "==" | "!=" | "<" | ">" | "<=" | ">=")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An identifier, keyword or aggregation name; which one depends on
    /// where it stands.
    Ident,
    Number,
    Duration,
    Str,
    LParen,
    RParen,
    LBrace,
    RBrace,
    LBracket,
    RBracket,
    Comma,
    Colon,
    /// `=`, `!=`, `=~`, `!~` inside braces.
    Matcher,
    /// A binary operator (`+`, `==`, `atan2`, `and`, ...).
    Op,
    At,
    Eof,
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    kind: Kind,
    start: usize,
    text: &'a str,
}

const AGGREGATORS: &[&str] = &[
    "sum",
    "avg",
    "count",
    "min",
    "max",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "count_values",
    "quantile",
];
/// Binary operators that are words. The first three (not `atan2`) also
/// name a metric where an operand starts.
const SET_OPS: &[&str] = &["and", "or", "unless", "atan2"];
/// Keywords that cannot name a metric.
const KEYWORDS: &[&str] = &[
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
];
/// Keywords Prometheus also reads as a metric name where one may stand.
const METRIC_KEYWORDS: &[&str] = &["offset", "by", "without", "start", "end"];

impl Token<'_> {
    fn is_word(&self, word: &str) -> bool {
        self.kind == Kind::Ident && self.text.eq_ignore_ascii_case(word)
    }

    fn is_aggregator(&self) -> bool {
        self.kind == Kind::Ident && AGGREGATORS.iter().any(|a| self.is_word(a))
    }

    fn is_keyword(&self) -> bool {
        self.kind == Kind::Ident && KEYWORDS.iter().any(|k| self.is_word(k))
    }

    /// How Prometheus names the token in `unexpected ...`.
    fn describe(&self) -> String {
        match self.kind {
            Kind::Eof => "end of input".into(),
            Kind::Ident if self.is_word("inf") || self.is_word("nan") => {
                format!("number {}", go_quote(self.text))
            }
            Kind::Ident if self.is_aggregator() => format!("<aggr:{}>", self.text),
            Kind::Ident if self.is_keyword() => format!("<{}>", self.text),
            Kind::Ident if self.text.contains(':') => format!("metric identifier {:?}", self.text),
            Kind::Ident => format!("identifier {:?}", self.text),
            Kind::Op => format!("<op:{}>", self.text),
            Kind::At => "<op:@>".into(),
            Kind::Number => format!("number {}", go_quote(self.text)),
            Kind::Duration => format!("duration {}", go_quote(self.text)),
            Kind::Str => format!("string {}", go_quote(self.text)),
            _ => format!("{:?}", self.text),
        }
    }
}

/// Go's `%q` of a token value, shortened past ten characters as
/// Prometheus does.
fn go_quote(text: &str) -> String {
    if text.chars().count() > 10 {
        let head: String = text.chars().take(10).collect();
        format!("{head:?}...")
    } else {
        format!("{text:?}")
    }
}

fn is_alpha(c: char) -> bool {
    c == '_' || c.is_ascii_alphabetic()
}

fn is_alnum(c: char) -> bool {
    is_alpha(c) || c.is_ascii_digit()
}

/// Prometheus 2.42's lexer states, producing one token at a time.
struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    paren_depth: usize,
    brace_open: bool,
    bracket_open: bool,
    /// Inside brackets, before the range (a duration is due).
    range_due: bool,
    /// Inside brackets, after the subquery's colon.
    colon_seen: bool,
}

impl<'a> Lexer<'a> {
    fn peek_char(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek_char()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn token(&self, kind: Kind, start: usize) -> Token<'a> {
        Token {
            kind,
            start,
            text: &self.src[start..self.pos],
        }
    }

    fn skip_blanks(&mut self) {
        loop {
            match self.peek_char() {
                Some(c) if c.is_whitespace() => {
                    self.bump();
                }
                Some('#') if !self.bracket_open => {
                    while !matches!(self.peek_char(), None | Some('\n')) {
                        self.bump();
                    }
                }
                _ => return,
            }
        }
    }

    fn next(&mut self) -> Result<Token<'a>, SyntaxError> {
        self.skip_blanks();
        let start = self.pos;
        let err = |offset: usize, message: String| Err(SyntaxError { offset, message });
        if self.bracket_open && self.range_due {
            self.range_due = false;
            return self.range();
        }
        let Some(c) = self.bump() else {
            return if self.brace_open {
                err(start, "unexpected end of input inside braces".into())
            } else if self.paren_depth > 0 {
                err(start, "unclosed left parenthesis".into())
            } else if self.bracket_open {
                err(start, "unclosed left bracket".into())
            } else {
                Ok(self.token(Kind::Eof, start))
            };
        };
        if self.brace_open {
            return match c {
                c if is_alpha(c) => {
                    while self.peek_char().is_some_and(is_alnum) {
                        self.bump();
                    }
                    Ok(self.token(Kind::Ident, start))
                }
                ',' => Ok(self.token(Kind::Comma, start)),
                '"' | '\'' | '`' => self.string(c, start),
                '=' => {
                    if self.peek_char() == Some('~') {
                        self.bump();
                    }
                    Ok(self.token(Kind::Matcher, start))
                }
                '!' => match self.bump() {
                    Some('~' | '=') => Ok(self.token(Kind::Matcher, start)),
                    Some(n) => err(
                        start,
                        format!("unexpected character after '!' inside braces: {n:?}"),
                    ),
                    None => err(
                        start,
                        "unexpected end of input after '!' inside braces".into(),
                    ),
                },
                '{' => err(start, "unexpected left brace '{'".into()),
                '}' => {
                    self.brace_open = false;
                    Ok(self.token(Kind::RBrace, start))
                }
                c => err(start, format!("unexpected character inside braces: {c:?}")),
            };
        }
        match c {
            ',' => Ok(self.token(Kind::Comma, start)),
            '*' | '/' | '%' | '+' | '-' | '^' => Ok(self.token(Kind::Op, start)),
            '=' => match self.peek_char() {
                Some('=') => {
                    self.bump();
                    Ok(self.token(Kind::Op, start))
                }
                Some('~') => err(start, "unexpected character after '=': '~'".into()),
                _ => Ok(self.token(Kind::Matcher, start)),
            },
            '!' => match self.peek_char() {
                Some('=') => {
                    self.bump();
                    Ok(self.token(Kind::Op, start))
                }
                Some(n) => err(start, format!("unexpected character after '!': {n:?}")),
                None => err(start, "unexpected end of input after '!'".into()),
            },
            '<' | '>' => {
                if self.peek_char() == Some('=') {
                    self.bump();
                }
                Ok(self.token(Kind::Op, start))
            }
            c if c.is_ascii_digit()
                || (c == '.' && self.peek_char().is_some_and(|d| d.is_ascii_digit())) =>
            {
                self.number_or_duration(start)
            }
            '"' | '\'' | '`' => self.string(c, start),
            c if is_alpha(c) || c == ':' => {
                if self.bracket_open {
                    // Prometheus's lexer reads any letter in brackets as
                    // the subquery's colon, and refuses a second one.
                    if self.colon_seen {
                        return err(start, format!("unexpected colon {c:?}"));
                    }
                    self.colon_seen = true;
                    return Ok(self.token(Kind::Colon, start));
                }
                while self.peek_char().is_some_and(|c| is_alnum(c) || c == ':') {
                    self.bump();
                }
                let t = self.token(Kind::Ident, start);
                if SET_OPS.iter().any(|w| t.is_word(w)) {
                    return Ok(self.token(Kind::Op, start));
                }
                Ok(t)
            }
            '@' => Ok(self.token(Kind::At, start)),
            '(' => {
                self.paren_depth += 1;
                Ok(self.token(Kind::LParen, start))
            }
            ')' => {
                if self.paren_depth == 0 {
                    return err(self.pos, "unexpected right parenthesis ')'".into());
                }
                self.paren_depth -= 1;
                Ok(self.token(Kind::RParen, start))
            }
            '{' => {
                self.brace_open = true;
                Ok(self.token(Kind::LBrace, start))
            }
            '[' => {
                if self.bracket_open {
                    return err(start, "unexpected left bracket '['".into());
                }
                self.bracket_open = true;
                self.range_due = true;
                self.colon_seen = false;
                Ok(self.token(Kind::LBracket, start))
            }
            ']' => {
                if !self.bracket_open {
                    return err(start, "unexpected right bracket ']'".into());
                }
                self.bracket_open = false;
                Ok(self.token(Kind::RBracket, start))
            }
            c => err(start, format!("unexpected character: {c:?}")),
        }
    }

    /// The range right after `[`: a duration with units.
    fn range(&mut self) -> Result<Token<'a>, SyntaxError> {
        let start = self.pos;
        let err = |message: String| {
            Err(SyntaxError {
                offset: start,
                message,
            })
        };
        let digits = self.src[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .count();
        self.pos += digits;
        if !self.peek_char().is_some_and(is_alnum) || digits == 0 {
            if self.peek_char() == Some('.') && digits > 0 {
                // `[1.5m]`: Prometheus's wording for a fraction.
                while self.peek_char().is_some_and(|c| is_alnum(c) || c == '.') {
                    self.bump();
                }
                return err(format!(
                    "not a valid duration string: {:?}",
                    &self.src[start..self.pos]
                ));
            }
            return err("missing unit character in duration".into());
        }
        if !self.remaining_duration() {
            return err(format!(
                "bad duration syntax: {:?}",
                &self.src[start..self.pos]
            ));
        }
        Ok(self.token(Kind::Duration, start))
    }

    /// After the digits of a duration: units and further number-unit
    /// pairs; true if it ends where a duration may end.
    fn remaining_duration(&mut self) -> bool {
        let accept = |lx: &mut Self, set: &str| {
            if lx.peek_char().is_some_and(|c| set.contains(c)) {
                lx.bump();
                true
            } else {
                false
            }
        };
        if !accept(self, "smhdwy") {
            return false;
        }
        accept(self, "s");
        while accept(self, "0123456789") {
            while accept(self, "0123456789") {}
            if !accept(self, "smhdw") {
                return false;
            }
            accept(self, "s");
        }
        !self.peek_char().is_some_and(is_alnum)
    }

    fn number_or_duration(&mut self, start: usize) -> Result<Token<'a>, SyntaxError> {
        self.pos = start;
        let rest = &self.src[start..];
        let mut len = 0;
        let bytes = rest.as_bytes();
        if rest.starts_with("0x") || rest.starts_with("0X") {
            len = 2;
            while len < bytes.len() && bytes[len].is_ascii_hexdigit() {
                len += 1;
            }
        } else {
            while len < bytes.len() && (bytes[len].is_ascii_digit() || bytes[len] == b'.') {
                len += 1;
            }
            if len < bytes.len() && (bytes[len] == b'e' || bytes[len] == b'E') {
                let mut e = len + 1;
                if e < bytes.len() && (bytes[e] == b'+' || bytes[e] == b'-') {
                    e += 1;
                }
                if e < bytes.len() && bytes[e].is_ascii_digit() {
                    while e < bytes.len() && bytes[e].is_ascii_digit() {
                        e += 1;
                    }
                    len = e;
                } else if !rest[e..].starts_with(|c: char| is_alnum(c) || c == '.') {
                    // Go's lexer takes `1e` as a number its parser then
                    // cannot read.
                    return Err(SyntaxError {
                        offset: start,
                        message: format!(
                            "error parsing number: strconv.ParseFloat: parsing {:?}: invalid syntax",
                            &rest[..e]
                        ),
                    });
                }
            }
        }
        self.pos = start + len;
        if !self.peek_char().is_some_and(is_alnum) {
            return Ok(self.token(Kind::Number, start));
        }
        self.pos = start + rest.chars().take_while(char::is_ascii_digit).count();
        if self.pos > start && self.remaining_duration() {
            return Ok(self.token(Kind::Duration, start));
        }
        Err(SyntaxError {
            offset: start,
            message: format!(
                "bad number or duration syntax: {:?}",
                &self.src[start..start + len.max(self.pos - start)]
            ),
        })
    }

    fn string(&mut self, quote: char, start: usize) -> Result<Token<'a>, SyntaxError> {
        let err = |message: String| {
            Err(SyntaxError {
                offset: start,
                message,
            })
        };
        loop {
            match self.bump() {
                None => {
                    return err(if quote == '`' {
                        "unterminated raw string".into()
                    } else {
                        "unterminated quoted string".into()
                    });
                }
                Some('\n') if quote != '`' => return err("unterminated quoted string".into()),
                Some('\\') if quote != '`' => {
                    if let Err(message) = self.escape(quote) {
                        return err(message);
                    }
                }
                Some(c) if c == quote => return Ok(self.token(Kind::Str, start)),
                Some(_) => {}
            }
        }
    }

    /// One escape sequence after a backslash, as Go's string lexer reads it.
    fn escape(&mut self, quote: char) -> Result<(), String> {
        let Some(c) = self.bump() else {
            return Err("escape sequence not terminated".into());
        };
        let (digits, base, max): (usize, u32, u32) = match c {
            'a' | 'b' | 'f' | 'n' | 'r' | 't' | 'v' | '\\' => return Ok(()),
            c if c == quote => return Ok(()),
            '0'..='7' => {
                self.pos -= 1;
                (3, 8, 255)
            }
            'x' => (2, 16, 255),
            'u' => (4, 16, 0x10ffff),
            'U' => (8, 16, 0x10ffff),
            c => return Err(format!("unknown escape sequence {}", go_rune(c))),
        };
        let mut value: u32 = 0;
        for _ in 0..digits {
            match self.peek_char() {
                None => return Err("escape sequence not terminated".into()),
                Some(d) => match d.to_digit(base) {
                    Some(v) => {
                        self.bump();
                        value = value * base + v;
                    }
                    None => {
                        return Err(format!(
                            "illegal character {} in escape sequence",
                            go_rune(d)
                        ));
                    }
                },
            }
        }
        if value > max || (0xd800..0xe000).contains(&value) {
            return Err("escape sequence is an invalid Unicode code point".into());
        }
        Ok(())
    }
}

/// Go's `%#U` of a rune: `U+0071 'q'`.
fn go_rune(c: char) -> String {
    let mut s = String::new();
    let _ = write!(s, "U+{:04X} {c:?}", c as u32);
    s
}

/// Reads `source` as Prometheus 2.42's grammar; the tokens if it is
/// well-formed, else the first error.
/// A well-formed query's tokens, with what the placing of errors of
/// meaning needs.
struct Parsed<'a> {
    tokens: Vec<Token<'a>>,
    /// Each function call.
    calls: Vec<CallSite>,
    /// Each regex matcher: the indexes of its label and its value.
    regexes: Vec<(usize, usize)>,
}

/// A function call in the token list.
struct CallSite {
    /// The index of its name.
    name: usize,
    /// The index of its closing parenthesis.
    close: usize,
    /// Each argument's token range.
    args: Vec<(usize, usize)>,
}

fn recognize(source: &str) -> Result<Parsed<'_>, SyntaxError> {
    let mut p = Recognizer {
        lexer: Lexer {
            src: source,
            pos: 0,
            paren_depth: 0,
            brace_open: false,
            bracket_open: false,
            range_due: false,
            colon_seen: false,
        },
        peeked: None,
        depth: 0,
        parsed: Parsed {
            tokens: Vec::new(),
            calls: Vec::new(),
            regexes: Vec::new(),
        },
    };
    p.expr()?;
    let t = p.next()?;
    if t.kind != Kind::Eof {
        return Err(unexpected(&t, "", ""));
    }
    Ok(p.parsed)
}

/// A duration token as Prometheus 2.42 reads it: units in order, each
/// once, more than zero.
fn check_duration(t: &Token) -> Result<(), SyntaxError> {
    let message = match super::dialect::parse_duration(t.text) {
        None => format!("not a valid duration string: {:?}", t.text),
        Some(0) => "duration must be greater than 0".into(),
        Some(_) => return Ok(()),
    };
    Err(SyntaxError {
        offset: t.start,
        message,
    })
}

/// Prometheus's `unexpected <token>[ in <context>][, expected <what>]`.
fn unexpected(t: &Token, context: &str, expected: &str) -> SyntaxError {
    let mut message = format!("unexpected {}", t.describe());
    if !context.is_empty() {
        let _ = write!(message, " in {context}");
    }
    if !expected.is_empty() {
        let _ = write!(message, ", expected {expected}");
    }
    SyntaxError {
        offset: t.start,
        message,
    }
}

struct Recognizer<'a> {
    lexer: Lexer<'a>,
    peeked: Option<Token<'a>>,
    parsed: Parsed<'a>,
    /// How many operands are open (nested); at most [`MAX_DEPTH`].
    depth: usize,
}

/// How deep the recognizer follows nested operands before it gives up
/// (an error with an empty message), so a hostile query cannot exhaust
/// the stack.
const MAX_DEPTH: usize = 200;

impl<'a> Recognizer<'a> {
    fn peek(&mut self) -> Result<Token<'a>, SyntaxError> {
        if let Some(t) = self.peeked {
            return Ok(t);
        }
        let t = self.lexer.next()?;
        self.peeked = Some(t);
        Ok(t)
    }

    fn next(&mut self) -> Result<Token<'a>, SyntaxError> {
        let t = self.peek()?;
        self.peeked = None;
        if t.kind != Kind::Eof {
            self.parsed.tokens.push(t);
        }
        Ok(t)
    }

    /// Operands joined by binary operators.
    fn expr(&mut self) -> Result<(), SyntaxError> {
        self.unary()?;
        self.binary_tail()
    }

    fn unary(&mut self) -> Result<(), SyntaxError> {
        if self.depth >= MAX_DEPTH {
            return Err(SyntaxError {
                offset: 0,
                message: String::new(),
            });
        }
        self.depth += 1;
        let r = self.operand();
        self.depth -= 1;
        r
    }

    /// Signs, then one operand with its modifiers.
    fn operand(&mut self) -> Result<(), SyntaxError> {
        while matches!(self.peek()?, t if t.kind == Kind::Op && (t.text == "+" || t.text == "-")) {
            self.next()?;
        }
        let start = self.peek()?.start;
        let selector = self.primary()?;
        self.modifiers(start, selector)
    }

    /// Ranges, subqueries, `offset` and `@` after the operand starting at
    /// `start`, a vector selector if `selector`; refused where Prometheus
    /// refuses them, at the place it names.
    fn modifiers(&mut self, start: usize, selector: bool) -> Result<(), SyntaxError> {
        #[derive(PartialEq)]
        enum Node {
            Selector,
            Range,
            Subquery,
            Other,
        }
        let mut node = if selector {
            Node::Selector
        } else {
            Node::Other
        };
        let (mut offset, mut at) = (false, false);
        let refuse = |offset: usize, message: &str| {
            Err(SyntaxError {
                offset,
                message: message.into(),
            })
        };
        const PRECEDED: &str =
            "must be preceded by an instant vector selector or range vector selector or a subquery";
        loop {
            let t = self.peek()?;
            if t.kind == Kind::LBracket {
                let open = self.next()?;
                let range = self.next()?; // The lexer refuses all but a duration.
                check_duration(&range)?;
                let t = self.next()?;
                match t.kind {
                    Kind::RBracket => {
                        match node {
                            Node::Selector if offset => {
                                return refuse(
                                    open.start,
                                    "no offset modifiers allowed before range",
                                );
                            }
                            Node::Selector if at => {
                                return refuse(open.start, "no @ modifiers allowed before range");
                            }
                            Node::Selector => {}
                            _ => {
                                return refuse(
                                    open.start,
                                    "ranges only allowed for vector selectors",
                                );
                            }
                        }
                        node = Node::Range;
                    }
                    Kind::Colon => {
                        let mut t = self.next()?;
                        if t.kind == Kind::Duration {
                            check_duration(&t)?;
                            t = self.next()?;
                        }
                        if t.kind != Kind::RBracket {
                            return Err(unexpected(&t, "subquery selector", "duration or \"]\""));
                        }
                        node = Node::Subquery;
                        (offset, at) = (false, false);
                    }
                    _ => return Err(unexpected(&t, "subquery or range", "\":\" or \"]\"")),
                }
            } else if t.is_word("offset") {
                self.next()?;
                let mut t = self.next()?;
                if t.kind == Kind::Op && t.text == "-" {
                    t = self.next()?;
                }
                if t.kind != Kind::Duration {
                    return Err(unexpected(&t, "offset", "duration"));
                }
                check_duration(&t)?;
                if node == Node::Other {
                    return refuse(start, &format!("offset modifier {PRECEDED}"));
                }
                if offset {
                    return refuse(start, "offset may not be set multiple times");
                }
                offset = true;
            } else if t.kind == Kind::At {
                self.next()?;
                let mut t = self.next()?;
                if t.kind == Kind::Op && (t.text == "-" || t.text == "+") {
                    t = self.next()?;
                }
                if t.is_word("start") || t.is_word("end") {
                    self.expect(Kind::LParen, "")?;
                    self.expect(Kind::RParen, "")?;
                } else if t.kind != Kind::Number {
                    return Err(unexpected(&t, "@", "timestamp"));
                }
                if node == Node::Other {
                    return refuse(start, &format!("@ modifier {PRECEDED}"));
                }
                if at {
                    return refuse(start, "@ <timestamp> may not be set multiple times");
                }
                at = true;
            } else {
                return Ok(());
            }
        }
    }

    fn expect(&mut self, kind: Kind, context: &str) -> Result<Token<'a>, SyntaxError> {
        let t = self.next()?;
        if t.kind != kind {
            return Err(unexpected(&t, context, ""));
        }
        Ok(t)
    }

    /// One operand; true if it is a vector selector.
    fn primary(&mut self) -> Result<bool, SyntaxError> {
        let t = self.next()?;
        match t.kind {
            Kind::Number | Kind::Str => Ok(false),
            Kind::LParen => {
                self.expr()?;
                self.expect(Kind::RParen, "").map(|_| false)
            }
            Kind::LBrace => self.matchers().map(|()| true),
            Kind::Op if SET_OPS[..3].iter().any(|w| t.is_word(w)) => {
                self.selector_rest().map(|()| true)
            }
            Kind::Ident if t.is_aggregator() => {
                let n = self.peek()?;
                if n.kind == Kind::LParen || n.is_word("by") || n.is_word("without") {
                    self.aggregation().map(|()| false)
                } else {
                    self.selector_rest().map(|()| true)
                }
            }
            Kind::Ident if self.peek()?.kind == Kind::LParen && !t.is_keyword() => {
                self.call().map(|()| false)
            }
            Kind::Ident if t.is_word("inf") || t.is_word("nan") => Ok(false),
            Kind::Ident if !t.is_keyword() || METRIC_KEYWORDS.iter().any(|k| t.is_word(k)) => {
                self.selector_rest().map(|()| true)
            }
            _ => Err(unexpected(&t, "", "")),
        }
    }

    /// After a metric name: optional `{...}`.
    fn selector_rest(&mut self) -> Result<(), SyntaxError> {
        if self.peek()?.kind == Kind::LBrace {
            self.next()?;
            self.matchers()?;
        }
        Ok(())
    }

    /// After `{`: `name op "value"` items up to `}`.
    fn matchers(&mut self) -> Result<(), SyntaxError> {
        const CTX: &str = "label matching";
        loop {
            let t = self.next()?;
            match t.kind {
                Kind::RBrace => return Ok(()),
                Kind::Ident => {}
                _ => return Err(unexpected(&t, CTX, "identifier or \"}\"")),
            }
            let label = self.parsed.tokens.len() - 1;
            let op = self.next()?;
            if op.kind != Kind::Matcher {
                return Err(unexpected(&op, CTX, "label matching operator"));
            }
            let t = self.next()?;
            if t.kind != Kind::Str {
                return Err(unexpected(&t, CTX, "string"));
            }
            if op.text.ends_with('~') {
                self.parsed
                    .regexes
                    .push((label, self.parsed.tokens.len() - 1));
            }
            let t = self.next()?;
            match t.kind {
                Kind::RBrace => return Ok(()),
                Kind::Comma => {}
                _ => return Err(unexpected(&t, CTX, "\",\" or \"}\"")),
            }
        }
    }

    /// `(label, ...)` after `by`, `without`, `on`, `ignoring`, `group_x`.
    fn labels(&mut self) -> Result<(), SyntaxError> {
        const CTX: &str = "grouping opts";
        let t = self.next()?;
        if t.kind != Kind::LParen {
            return Err(unexpected(&t, CTX, "\"(\""));
        }
        loop {
            let t = self.next()?;
            match t.kind {
                Kind::RParen => return Ok(()),
                Kind::Ident => {}
                Kind::Op if SET_OPS.iter().any(|w| t.is_word(w)) => {}
                _ => return Err(unexpected(&t, CTX, "label")),
            }
            let t = self.next()?;
            match t.kind {
                Kind::RParen => return Ok(()),
                Kind::Comma => {}
                _ => return Err(unexpected(&t, CTX, "\",\" or \")\"")),
            }
        }
    }

    /// After an aggregation's name.
    fn aggregation(&mut self) -> Result<(), SyntaxError> {
        const CTX: &str = "aggregation";
        let mut grouped = false;
        let t = self.peek()?;
        if t.is_word("by") || t.is_word("without") {
            self.next()?;
            self.labels()?;
            grouped = true;
        }
        let t = self.next()?;
        if t.kind != Kind::LParen {
            return Err(unexpected(&t, CTX, ""));
        }
        if self.peek()?.kind == Kind::RParen {
            self.next()?;
        } else {
            loop {
                self.operand_in(CTX)?;
                self.binary_tail()?;
                let t = self.next()?;
                match t.kind {
                    Kind::RParen => break,
                    Kind::Comma if self.peek()?.kind == Kind::RParen => {
                        return Err(SyntaxError {
                            offset: t.start,
                            message: "trailing commas not allowed in function call args".into(),
                        });
                    }
                    Kind::Comma => {}
                    _ => return Err(unexpected(&t, CTX, "")),
                }
            }
        }
        let t = self.peek()?;
        if !grouped && (t.is_word("by") || t.is_word("without")) {
            self.next()?;
            self.labels()?;
        }
        Ok(())
    }

    /// The first operand of an argument, whose first token Prometheus
    /// names with `context` when it cannot start one.
    fn operand_in(&mut self, context: &str) -> Result<(), SyntaxError> {
        let t = self.peek()?;
        let starts = match t.kind {
            Kind::Number | Kind::Str | Kind::LParen | Kind::LBrace | Kind::Ident => true,
            Kind::Op => t.text == "+" || t.text == "-" || SET_OPS[..3].iter().any(|w| t.is_word(w)),
            _ => false,
        };
        if !starts {
            self.next()?;
            return Err(unexpected(&t, context, ""));
        }
        self.unary()
    }

    /// The binary operators and operands after a first operand.
    fn binary_tail(&mut self) -> Result<(), SyntaxError> {
        while self.peek()?.kind == Kind::Op {
            let op = self.next()?;
            let bool_on_arithmetic = self.peek()?.is_word("bool") && !is_comparison(&op);
            if self.peek()?.is_word("bool") {
                self.next()?;
            }
            let t = self.peek()?;
            if t.is_word("on") || t.is_word("ignoring") {
                self.next()?;
                self.labels()?;
                let t = self.peek()?;
                if t.is_word("group_left") || t.is_word("group_right") {
                    self.next()?;
                    if self.peek()?.kind == Kind::LParen {
                        self.labels()?;
                    }
                }
            }
            self.unary()?;
            if bool_on_arithmetic {
                return Err(SyntaxError {
                    offset: op.start,
                    message: "bool modifier can only be used on comparison operators".into(),
                });
            }
        }
        Ok(())
    }

    /// After a function's name: `(` arguments `)`.
    fn call(&mut self) -> Result<(), SyntaxError> {
        let name = self.parsed.tokens.len() - 1;
        let call = self.parsed.calls.len();
        self.parsed.calls.push(CallSite {
            name,
            close: name,
            args: Vec::new(),
        });
        self.next()?; // `(`
        if self.peek()?.kind == Kind::RParen {
            self.next()?;
            self.parsed.calls[call].close = self.parsed.tokens.len() - 1;
            return Ok(());
        }
        loop {
            let from = self.parsed.tokens.len();
            self.expr()?;
            let to = self.parsed.tokens.len();
            self.parsed.calls[call].args.push((from, to));
            let t = self.next()?;
            match t.kind {
                Kind::RParen => {
                    self.parsed.calls[call].close = self.parsed.tokens.len() - 1;
                    return Ok(());
                }
                Kind::Comma => {
                    let n = self.peek()?;
                    if n.kind == Kind::RParen || n.kind == Kind::Comma {
                        return Err(SyntaxError {
                            offset: t.start,
                            message: "trailing commas not allowed in function call args".into(),
                        });
                    }
                }
                _ => return Err(unexpected(&t, "", "")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<(Kind, &str)> {
        let mut lx = Lexer {
            src,
            pos: 0,
            paren_depth: 0,
            brace_open: false,
            bracket_open: false,
            range_due: false,
            colon_seen: false,
        };
        let mut out = Vec::new();
        loop {
            let t = lx.next().unwrap_or_else(|e| panic!("{src}: {e:?}"));
            if t.kind == Kind::Eof {
                return out;
            }
            out.push((t.kind, t.text));
        }
    }

    fn lex_error(src: &str) -> (usize, String) {
        let mut lx = Lexer {
            src,
            pos: 0,
            paren_depth: 0,
            brace_open: false,
            bracket_open: false,
            range_due: false,
            colon_seen: false,
        };
        loop {
            match lx.next() {
                Ok(t) if t.kind == Kind::Eof => panic!("{src}: no lexer error"),
                Ok(_) => {}
                Err(e) => return (e.offset, e.message),
            }
        }
    }

    #[test]
    fn lexer_reads_tokens_with_their_text() {
        use Kind::*;
        assert_eq!(
            kinds("sum by (job) (rate(x{a=~\"b\\\"c\"}[5m:1m] offset -1h30m))"),
            vec![
                (Ident, "sum"),
                (Ident, "by"),
                (LParen, "("),
                (Ident, "job"),
                (RParen, ")"),
                (LParen, "("),
                (Ident, "rate"),
                (LParen, "("),
                (Ident, "x"),
                (LBrace, "{"),
                (Ident, "a"),
                (Matcher, "=~"),
                (Str, "\"b\\\"c\""),
                (RBrace, "}"),
                (LBracket, "["),
                (Duration, "5m"),
                (Colon, ":"),
                (Duration, "1m"),
                (RBracket, "]"),
                (Ident, "offset"),
                (Op, "-"),
                (Duration, "1h30m"),
                (RParen, ")"),
                (RParen, ")"),
            ]
        );
        assert_eq!(
            kinds("a:b and 0x1F >= 1.5e-3 # (unclosed in a comment\n@ `raw\\d`"),
            vec![
                (Ident, "a:b"),
                (Op, "and"),
                (Number, "0x1F"),
                (Op, ">="),
                (Number, "1.5e-3"),
                (At, "@"),
                (Str, "`raw\\d`"),
            ]
        );
        assert_eq!(
            kinds("x != bool 1"),
            vec![(Ident, "x"), (Op, "!="), (Ident, "bool"), (Number, "1")]
        );
    }

    #[test]
    fn lexer_errors_are_prometheus_wording_at_prometheus_offsets() {
        for (src, offset, message) in [
            ("rate(", 5, "unclosed left parenthesis"),
            ("foo)", 4, "unexpected right parenthesis ')'"),
            ("foo}", 3, "unexpected character: '}'"),
            ("foo]", 3, "unexpected right bracket ']'"),
            ("foo[5m", 6, "unclosed left bracket"),
            ("foo{a=\"b\"", 9, "unexpected end of input inside braces"),
            (
                "foo{a!\"b\"}",
                5,
                "unexpected character after '!' inside braces: '\"'",
            ),
            ("foo{a=1}", 6, "unexpected character inside braces: '1'"),
            ("foo[5]", 4, "missing unit character in duration"),
            ("foo[]", 4, "missing unit character in duration"),
            ("foo[5x]", 4, "bad duration syntax: \"5\""),
            ("x[1h30x]", 2, "bad duration syntax: \"1h30\""),
            ("\"a\\qb\"", 0, "unknown escape sequence U+0071 'q'"),
            (
                "foo{a=\"\\x\"}",
                6,
                "illegal character U+0022 '\"' in escape sequence",
            ),
            (
                "'a\\x4g'",
                0,
                "illegal character U+0067 'g' in escape sequence",
            ),
            ("\"unterminated", 0, "unterminated quoted string"),
            ("`unterminated", 0, "unterminated raw string"),
            ("foo ! bar", 4, "unexpected character after '!': ' '"),
            ("foo$", 3, "unexpected character: '$'"),
            ("é + (", 0, "unexpected character: 'é'"),
        ] {
            assert_eq!(lex_error(src), (offset, message.to_string()), "{src}");
        }
    }

    #[test]
    fn well_formed_queries_are_recognized() {
        // What the recognizer accepts, the parser's message (about
        // meaning) is kept: it must not fault valid syntax.
        for ok in [
            "sum without () (x)",
            "topk by (a) (3, x)",
            "x == bool on(a) y",
            "a and on() b",
            "rate(x[5m:])[10m:1m]",
            "x{a=\"b\"}[5m] @ end()",
            "sum by (on, bool, by) (x)",
            "x offset -5m @ -10",
            "count_values(\"a\", x)",
            "foo:bar:baz{a=\"b\"}",
            "histogram_quantile(0.9, sum by (le) (rate(x[5m])))",
            "- - 1",
            "+x",
            "by{a=\"b\"} + offset + sum",
            "x[5m] @ start()",
            "x # c",
            "sum(x) by (a) + on(b) group_right(c) y",
            "max_over_time(deriv(rate(x[1m])[5m:1m])[10m:])",
            "x{a=~\"b\",}",
            "NaN + -Inf * 0x1F / 1.5e3",
            "label_replace(x, \"a\", `$1`, 'b', \"(.*)\")",
            "SUM BY (a) (x) AND ON (a) y",
            "x @ 1 offset 1m [5m:1m] offset 1h",
        ] {
            assert!(recognize(ok).is_ok(), "{ok}: {:?}", recognize(ok).err());
        }
    }

    #[test]
    fn positions_are_line_and_byte_column() {
        assert_eq!(with_position("abc", 0, "m"), "1:1: parse error: m");
        assert_eq!(with_position("abc", 3, "m"), "1:4: parse error: m");
        assert_eq!(with_position("a\n  bc", 4, "m"), "2:3: parse error: m");
        assert_eq!(with_position("\"é\" bar", 5, "m"), "1:6: parse error: m");
        assert_eq!(with_position("x", 10, "m"), "1:2: parse error: m");
    }

    /// Queries Prometheus 2.42 refuses, and its message for each (from
    /// `/api/v1/query`, without the `invalid parameter "query": ` prefix).
    pub(crate) const PROMETHEUS_2_42: &[(&str, &str)] = &[
        ("rate(", "1:6: parse error: unclosed left parenthesis"),
        (
            "sum(rate(x[5m])",
            "1:16: parse error: unclosed left parenthesis",
        ),
        (
            "foo{a=}",
            "1:7: parse error: unexpected \"}\" in label matching, expected string",
        ),
        ("1 +", "1:4: parse error: unexpected end of input"),
        ("foo bar", "1:5: parse error: unexpected identifier \"bar\""),
        ("foo)", "1:5: parse error: unexpected right parenthesis ')'"),
        ("foo}", "1:4: parse error: unexpected character: '}'"),
        ("foo]", "1:4: parse error: unexpected right bracket ']'"),
        ("foo[5m", "1:7: parse error: unclosed left bracket"),
        (
            "foo{a=\"b\",",
            "1:11: parse error: unexpected end of input inside braces",
        ),
        (
            "foo{a}",
            "1:6: parse error: unexpected \"}\" in label matching, expected label matching operator",
        ),
        (
            "foo{a=\"b\" c=\"d\"}",
            "1:11: parse error: unexpected identifier \"c\" in label matching, expected \",\" or \"}\"",
        ),
        (
            "foo{=\"b\"}",
            "1:5: parse error: unexpected \"=\" in label matching, expected identifier or \"}\"",
        ),
        (
            "foo{a=\"b\",,c=\"d\"}",
            "1:11: parse error: unexpected \",\" in label matching, expected identifier or \"}\"",
        ),
        (
            "foo[5]",
            "1:5: parse error: missing unit character in duration",
        ),
        ("foo[5x]", "1:5: parse error: bad duration syntax: \"5\""),
        (
            "foo[5m:1]",
            "1:8: parse error: unexpected number \"1\" in subquery selector, expected duration or \"]\"",
        ),
        (
            "foo offset",
            "1:11: parse error: unexpected end of input in offset, expected duration",
        ),
        (
            "foo offset 5",
            "1:12: parse error: unexpected number \"5\" in offset, expected duration",
        ),
        (
            "foo offset bar",
            "1:12: parse error: unexpected identifier \"bar\" in offset, expected duration",
        ),
        (
            "nosuchfunc(x)",
            "1:1: parse error: unknown function with name \"nosuchfunc\"",
        ),
        (
            "\"a\\qb\"",
            "1:1: parse error: unknown escape sequence U+0071 'q'",
        ),
        (
            "\"unterminated",
            "1:1: parse error: unterminated quoted string",
        ),
        ("* 1", "1:1: parse error: unexpected <op:*>"),
        ("1 * * 2", "1:5: parse error: unexpected <op:*>"),
        (
            "sum by (a) ",
            "1:12: parse error: unexpected end of input in aggregation",
        ),
        ("x by (a)", "1:3: parse error: unexpected <by>"),
        (
            "sum by foo (x)",
            "1:8: parse error: unexpected identifier \"foo\" in grouping opts, expected \"(\"",
        ),
        (
            "sum by (a b) (x)",
            "1:11: parse error: unexpected identifier \"b\" in grouping opts, expected \",\" or \")\"",
        ),
        (
            "sum by (1) (x)",
            "1:9: parse error: unexpected number \"1\" in grouping opts, expected label",
        ),
        (
            "sum(x) by",
            "1:10: parse error: unexpected end of input in grouping opts, expected \"(\"",
        ),
        (
            "sum(x y)",
            "1:7: parse error: unexpected identifier \"y\" in aggregation",
        ),
        (
            "sum(,)",
            "1:5: parse error: unexpected \",\" in aggregation",
        ),
        (
            "foo{a=\"b\"} {c=\"d\"}",
            "1:12: parse error: unexpected \"{\"",
        ),
        (
            "x @",
            "1:4: parse error: unexpected end of input in @, expected timestamp",
        ),
        (
            "foo @ bar",
            "1:7: parse error: unexpected identifier \"bar\" in @, expected timestamp",
        ),
        ("x ==", "1:5: parse error: unexpected end of input"),
        ("1 bool", "1:3: parse error: unexpected <bool>"),
        ("rate(x y)", "1:8: parse error: unexpected identifier \"y\""),
        ("rate(,)", "1:6: parse error: unexpected \",\""),
        (
            "abs(1,)",
            "1:6: parse error: trailing commas not allowed in function call args",
        ),
        (
            "1 +\n  bar baz",
            "2:7: parse error: unexpected identifier \"baz\"",
        ),
        (
            "sum(\n  rate(x[5m]\n",
            "3:1: parse error: unclosed left parenthesis",
        ),
        (
            "x # comment (\n+ 1 +",
            "2:6: parse error: unexpected end of input",
        ),
        (
            "\"é\" bar",
            "1:6: parse error: unexpected identifier \"bar\"",
        ),
        ("sum(x) (y)", "1:8: parse error: unexpected \"(\""),
        ("x[5m:]]", "1:7: parse error: unexpected right bracket ']'"),
        (
            "rate()",
            "1:1: parse error: expected 1 argument(s) in call to \"rate\", got 0",
        ),
        (
            "label_replace(x, \"a\")",
            "1:1: parse error: expected 5 argument(s) in call to \"label_replace\", got 2",
        ),
        (
            "rate(x)",
            "1:6: parse error: expected type range vector in call to function \"rate\", got instant vector",
        ),
        (
            "x[1.5m]",
            "1:3: parse error: not a valid duration string: \"1.5m\"",
        ),
        ("x[5m bar]", "1:7: parse error: unexpected colon 'a'"),
        (
            "histogram_quantile(0.9, rate(x[5m])[5m:])",
            "1:25: parse error: expected type instant vector in call to function \"histogram_quantile\", got range vector",
        ),
        (
            "clamp(x, y, 1)",
            "1:10: parse error: expected type scalar in call to function \"clamp\", got instant vector",
        ),
        (
            "label_replace(x, \"a\", \"b\", \"c\", sum(y))",
            "1:33: parse error: expected type string in call to function \"label_replace\", got instant vector",
        ),
        (
            "round(x, sum(y))",
            "1:10: parse error: expected type scalar in call to function \"round\", got instant vector",
        ),
        (
            "rate(x[5m+1m])",
            "1:10: parse error: unexpected <op:+> in subquery or range, expected \":\" or \"]\"",
        ),
        (
            "1 and 2",
            "1:1: parse error: set operator \"and\" not allowed in binary scalar expression",
        ),
    ];

    #[test]
    fn refused_queries_say_where_as_prometheus_does() {
        let mut differences = Vec::new();
        for (src, want) in PROMETHEUS_2_42 {
            match super::super::engine::parse(src) {
                Ok(_) => differences.push(format!("{src:?}: accepted")),
                Err(e) => {
                    let got = e.to_string();
                    if got != *want {
                        differences.push(format!("{src:?}:\n  want {want}\n  got  {got}"));
                    }
                }
            }
        }
        assert!(differences.is_empty(), "{}", differences.join("\n"));
    }
}

#[cfg(test)]
mod robustness {
    use super::tests::PROMETHEUS_2_42;

    #[test]
    fn every_prefix_and_insertion_is_placed_without_panic() {
        let seeds = PROMETHEUS_2_42.iter().map(|(q, _)| *q).chain([
            "sum by (a) (rate(x{a=~\"b\", c!=`d`}[5m:1m] offset 1h @ 100)) / on(a) group_left(b) y",
        ]);
        let inserts = [
            '(', ')', '[', ']', '{', '}', '"', '\'', '`', '\\', ',', ':', '@', '!', '=', '~', '#',
            '\n', 'é', '1', 'x', ' ',
        ];
        for seed in seeds {
            let bounds: Vec<usize> = seed
                .char_indices()
                .map(|(i, _)| i)
                .chain([seed.len()])
                .collect();
            for &b in &bounds {
                let _ = super::super::engine::parse(&seed[..b]);
                for c in inserts {
                    let q = format!("{}{c}{}", &seed[..b], &seed[b..]);
                    if let Err(e) = super::super::engine::parse(&q) {
                        let m = e.to_string();
                        let (line, rest) = m.split_once(':').unwrap();
                        assert!(
                            line.parse::<usize>().is_ok() && rest.contains(": parse error: "),
                            "{q:?}: {m}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn deep_nesting_is_placed_without_overflow() {
        let q = format!("{}x{}", "(".repeat(20_000), ")".repeat(19_999));
        let t = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || super::locate(&q, "unclosed left parenthesis"))
            .unwrap();
        let m = t.join().expect("no stack overflow");
        assert!(m.starts_with("1:"), "{m}");
    }
}
