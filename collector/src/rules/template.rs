//! Alert label and annotation templates: the common subset of Go's
//! `text/template` with Prometheus's data and functions, parsed once at load
//! so that evaluation never fails on syntax.
//!
//! Supported:
//! - text with `{{ ... }}` actions, `{{-` / `-}}` whitespace trimming and
//!   `{{/* comments */}}`;
//! - operands `$labels`, `$labels.<name>`, `.Labels`, `.Labels.<name>`,
//!   `$value`, `.Value`, `$externalLabels(.<name>)`, `$externalURL`,
//!   string literals (`"..."`, `` `...` ``) and numbers;
//! - function calls and pipelines (`{{ $value | humanize }}`,
//!   `{{ printf "%.2f" $value }}`) with `humanize`, `humanize1024`,
//!   `humanizeDuration`, `humanizePercentage`, `printf`, `index`,
//!   `toUpper`, `toLower`, `title`.
//!
//! Anything else (`if`, `range`, `with`, variables declared with `:=`,
//! `query`, parentheses, other functions) is refused when the rule file is
//! loaded. A function given a value it cannot use renders as
//! `<error expanding template: ...>`, as Prometheus renders it.

use super::gofmt;
use std::collections::BTreeMap;

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Action(Vec<Command>),
}

/// One command of a pipeline: a function and its arguments, or one operand.
#[derive(Debug, Clone, PartialEq)]
enum Command {
    Operand(Operand),
    Call(Func, Vec<Operand>),
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Labels,
    Label(String),
    Value,
    ExternalLabels,
    ExternalLabel(String),
    ExternalUrl,
    Str(String),
    Num(f64),
    Int(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    Humanize,
    Humanize1024,
    HumanizeDuration,
    HumanizePercentage,
    Printf,
    Index,
    ToUpper,
    ToLower,
    Title,
}

impl Func {
    fn from_name(s: &str) -> Option<Func> {
        Some(match s {
            "humanize" => Func::Humanize,
            "humanize1024" => Func::Humanize1024,
            "humanizeDuration" => Func::HumanizeDuration,
            "humanizePercentage" => Func::HumanizePercentage,
            "printf" => Func::Printf,
            "index" => Func::Index,
            "toUpper" => Func::ToUpper,
            "toLower" => Func::ToLower,
            "title" => Func::Title,
            _ => return None,
        })
    }

    /// Number of arguments, counting a piped value; `None`: one or more.
    fn arity(self) -> Option<usize> {
        match self {
            Func::Printf => None,
            Func::Index => Some(2),
            _ => Some(1),
        }
    }
}

/// What a template sees: the alert's series labels and value.
#[derive(Debug, Clone, Copy)]
pub struct TemplateData<'a> {
    /// `$labels`: the series' labels.
    pub labels: &'a BTreeMap<String, String>,
    /// `$value`: the sample value.
    pub value: f64,
    /// `$externalLabels`.
    pub external_labels: &'a BTreeMap<String, String>,
    /// `$externalURL`.
    pub external_url: &'a str,
}

/// A runtime value inside a pipeline.
#[derive(Debug, Clone)]
enum Val {
    Str(String),
    Num(f64),
    Int(i64),
    Map(BTreeMap<String, String>),
}

impl Val {
    fn go_type(&self) -> &'static str {
        match self {
            Val::Str(_) => "string",
            Val::Num(_) => "float64",
            Val::Int(_) => "int",
            Val::Map(_) => "map[string]string",
        }
    }

    fn print(&self) -> String {
        match self {
            Val::Str(s) => s.clone(),
            Val::Num(v) => gofmt::fmt_v(*v),
            Val::Int(i) => i.to_string(),
            Val::Map(m) => {
                let inner: Vec<String> = m.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("map[{}]", inner.join(" "))
            }
        }
    }

    /// As Prometheus's `convertToFloat`: numbers, and strings that parse.
    fn to_float(&self) -> Result<f64, String> {
        match self {
            Val::Num(v) => Ok(*v),
            Val::Int(i) => Ok(*i as f64),
            Val::Str(s) => parse_go_float(s)
                .ok_or_else(|| format!("strconv.ParseFloat: parsing {s:?}: invalid syntax")),
            Val::Map(_) => Err("can't convert map[string]string to float".into()),
        }
    }
}

fn parse_go_float(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

impl Template {
    /// Parses `text`; the error says what is not supported or malformed.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut nodes = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            let mut before = &rest[..open];
            let mut inner_start = open + 2;
            if rest[inner_start..].starts_with("- ")
                || rest[inner_start..].starts_with("-\t")
                || rest[inner_start..].starts_with("-\n")
            {
                before = before.trim_end();
                inner_start += 1;
            }
            if !before.is_empty() {
                nodes.push(Node::Text(before.to_string()));
            }
            let after_open = &rest[inner_start..];
            let close = find_close(after_open)
                .ok_or_else(|| "unclosed action (missing \"}}\")".to_string())?;
            let mut inner = &after_open[..close];
            let mut trim_right = false;
            if inner.ends_with(" -") || inner.ends_with("\t-") || inner.ends_with("\n-") {
                inner = &inner[..inner.len() - 1];
                trim_right = true;
            }
            rest = &after_open[close + 2..];
            if trim_right {
                rest = rest.trim_start();
            }
            let trimmed = inner.trim();
            if trimmed.starts_with("/*") {
                if !trimmed.ends_with("*/") {
                    return Err("unclosed comment".into());
                }
                continue;
            }
            nodes.push(Node::Action(parse_pipeline(trimmed)?));
        }
        if !rest.is_empty() {
            nodes.push(Node::Text(rest.to_string()));
        }
        Ok(Template { nodes })
    }

    /// Renders the template. A function error renders as Prometheus does:
    /// the whole result becomes `<error expanding template: ...>`.
    pub fn render(&self, data: &TemplateData<'_>) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            match n {
                Node::Text(t) => out.push_str(t),
                Node::Action(p) => match run_pipeline(p, data) {
                    Ok(v) => out.push_str(&v.print()),
                    Err(e) => return format!("<error expanding template: {e}>"),
                },
            }
        }
        out
    }
}

/// Position of the `}}` closing an action, skipping quoted strings.
fn find_close(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
            }
            b'}' if b.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Pipe,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '|' {
            toks.push(Tok::Pipe);
            i += 1;
        } else if c == '"' {
            let mut out = String::new();
            i += 1;
            loop {
                let Some(&c) = chars.get(i) else {
                    return Err("unterminated quoted string".into());
                };
                i += 1;
                match c {
                    '"' => break,
                    '\\' => {
                        let Some(&e) = chars.get(i) else {
                            return Err("unterminated quoted string".into());
                        };
                        i += 1;
                        out.push(match e {
                            'n' => '\n',
                            't' => '\t',
                            'r' => '\r',
                            '\\' => '\\',
                            '"' => '"',
                            '\'' => '\'',
                            other => return Err(format!("unsupported escape \\{other}")),
                        });
                    }
                    c => out.push(c),
                }
            }
            toks.push(Tok::Str(out));
        } else if c == '`' {
            let start = i + 1;
            let end = chars[start..]
                .iter()
                .position(|&c| c == '`')
                .ok_or("unterminated raw quoted string")?;
            toks.push(Tok::Str(chars[start..start + end].iter().collect()));
            i = start + end + 1;
        } else if c == '(' || c == ')' {
            return Err("parentheses are not supported".into());
        } else {
            let start = i;
            while i < chars.len()
                && !chars[i].is_whitespace()
                && !matches!(chars[i], '|' | '"' | '`' | '(' | ')')
            {
                i += 1;
            }
            toks.push(Tok::Word(chars[start..i].iter().collect()));
        }
    }
    Ok(toks)
}

fn parse_pipeline(s: &str) -> Result<Vec<Command>, String> {
    let toks = tokenize(s)?;
    if toks.is_empty() {
        return Err("missing value for command".into());
    }
    let mut cmds = Vec::new();
    for (stage, part) in toks.split(|t| *t == Tok::Pipe).enumerate() {
        let Some(first) = part.first() else {
            return Err("missing command in pipeline".into());
        };
        let cmd = match first {
            Tok::Word(w) if is_identifier(w) => {
                let f = Func::from_name(w).ok_or_else(|| unsupported_word(w))?;
                let args = part[1..]
                    .iter()
                    .map(parse_operand)
                    .collect::<Result<Vec<_>, _>>()?;
                let given = args.len() + usize::from(stage > 0);
                match f.arity() {
                    Some(n) if n != given => {
                        return Err(format!(
                            "wrong number of args for {w}: want {n} got {given}"
                        ));
                    }
                    None if given == 0 => return Err(format!("wrong number of args for {w}")),
                    _ => {}
                }
                Command::Call(f, args)
            }
            _ => {
                if stage > 0 {
                    return Err(format!(
                        "non executable command in pipeline stage {}",
                        stage + 1
                    ));
                }
                let op = parse_operand(first)?;
                if part.len() > 1 {
                    return Err("can't give argument to non-function".into());
                }
                Command::Operand(op)
            }
        };
        cmds.push(cmd);
    }
    Ok(cmds)
}

fn is_identifier(w: &str) -> bool {
    w.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
}

fn unsupported_word(w: &str) -> String {
    match w {
        "if" | "else" | "end" | "range" | "with" | "define" | "template" | "block" | "break"
        | "continue" => format!("{w:?} actions are not supported in nines templates"),
        "true" | "false" | "nil" => format!("{w:?} is not supported in nines templates"),
        _ => format!("function {w:?} not defined (or not supported in nines templates)"),
    }
}

fn parse_operand(t: &Tok) -> Result<Operand, String> {
    let w = match t {
        Tok::Str(s) => return Ok(Operand::Str(s.clone())),
        Tok::Pipe => return Err("unexpected |".into()),
        Tok::Word(w) => w,
    };
    if let Some(rest) = w.strip_prefix('$') {
        let (var, field) = match rest.split_once('.') {
            Some((v, f)) => (v, Some(f)),
            None => (rest, None),
        };
        return match (var, field) {
            ("labels", None) => Ok(Operand::Labels),
            ("labels", Some(f)) => Ok(Operand::Label(field_name(f)?)),
            ("value", None) => Ok(Operand::Value),
            ("externalLabels", None) => Ok(Operand::ExternalLabels),
            ("externalLabels", Some(f)) => Ok(Operand::ExternalLabel(field_name(f)?)),
            ("externalURL", None) => Ok(Operand::ExternalUrl),
            _ => Err(format!("undefined variable or field: {w}")),
        };
    }
    if let Some(rest) = w.strip_prefix('.') {
        let (var, field) = match rest.split_once('.') {
            Some((v, f)) => (v, Some(f)),
            None => (rest, None),
        };
        return match (var, field) {
            ("Labels", None) => Ok(Operand::Labels),
            ("Labels", Some(f)) => Ok(Operand::Label(field_name(f)?)),
            ("Value", None) => Ok(Operand::Value),
            ("ExternalLabels", None) => Ok(Operand::ExternalLabels),
            ("ExternalLabels", Some(f)) => Ok(Operand::ExternalLabel(field_name(f)?)),
            ("ExternalURL", None) => Ok(Operand::ExternalUrl),
            _ => Err(format!("unsupported field {w} (use .Labels or .Value)")),
        };
    }
    if w.contains(":=") || w == "=" {
        return Err("declaring variables is not supported in nines templates".into());
    }
    if let Ok(i) = w.parse::<i64>() {
        return Ok(Operand::Int(i));
    }
    if w.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+' || c == '.') {
        if let Ok(v) = w.parse::<f64>() {
            return Ok(Operand::Num(v));
        }
        return Err(format!("bad number syntax: {w:?}"));
    }
    Err(unsupported_word(w))
}

fn field_name(f: &str) -> Result<String, String> {
    if f.is_empty() || f.contains('.') || !f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(format!("bad field name {f:?}"));
    }
    Ok(f.to_string())
}

fn operand_value(o: &Operand, d: &TemplateData<'_>) -> Val {
    match o {
        Operand::Labels => Val::Map(d.labels.clone()),
        Operand::Label(n) => Val::Str(d.labels.get(n).cloned().unwrap_or_default()),
        Operand::Value => Val::Num(d.value),
        Operand::ExternalLabels => Val::Map(d.external_labels.clone()),
        Operand::ExternalLabel(n) => {
            Val::Str(d.external_labels.get(n).cloned().unwrap_or_default())
        }
        Operand::ExternalUrl => Val::Str(d.external_url.to_string()),
        Operand::Str(s) => Val::Str(s.clone()),
        Operand::Num(v) => Val::Num(*v),
        Operand::Int(i) => Val::Int(*i),
    }
}

fn run_pipeline(cmds: &[Command], d: &TemplateData<'_>) -> Result<Val, String> {
    let mut piped: Option<Val> = None;
    for c in cmds {
        piped = Some(match c {
            Command::Operand(o) => operand_value(o, d),
            Command::Call(f, args) => {
                let mut vals: Vec<Val> = args.iter().map(|a| operand_value(a, d)).collect();
                if let Some(p) = piped.take() {
                    vals.push(p);
                }
                call(*f, vals)?
            }
        });
    }
    piped.ok_or_else(|| "empty pipeline".to_string())
}

fn call(f: Func, args: Vec<Val>) -> Result<Val, String> {
    let one = || args[0].clone();
    Ok(match f {
        Func::Humanize => Val::Str(gofmt::humanize(one().to_float()?)),
        Func::Humanize1024 => Val::Str(gofmt::humanize1024(one().to_float()?)),
        Func::HumanizeDuration => Val::Str(gofmt::humanize_duration(one().to_float()?)),
        Func::HumanizePercentage => Val::Str(gofmt::humanize_percentage(one().to_float()?)),
        Func::ToUpper => Val::Str(one().print().to_uppercase()),
        Func::ToLower => Val::Str(one().print().to_lowercase()),
        Func::Title => Val::Str(title(&one().print())),
        Func::Index => match (&args[0], &args[1]) {
            (Val::Map(m), Val::Str(k)) => Val::Str(m.get(k).cloned().unwrap_or_default()),
            (a, b) => {
                return Err(format!(
                    "error calling index: cannot index {} with {}",
                    a.go_type(),
                    b.go_type()
                ));
            }
        },
        Func::Printf => {
            let Val::Str(format) = &args[0] else {
                return Err(format!(
                    "wrong type for value; expected string; got {}",
                    args[0].go_type()
                ));
            };
            Val::Str(sprintf(format, &args[1..]))
        }
    })
}

fn title(s: &str) -> String {
    let mut out = String::new();
    let mut start = true;
    for c in s.chars() {
        if start && c.is_alphabetic() {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = !c.is_alphanumeric() && c != '_' && c != '\'';
    }
    out
}

/// Go's `fmt.Sprintf` for the verbs alert messages use: `%v %s %d %f %e
/// %g %q %%`, with flags `-+0`, width and precision.
fn sprintf(format: &str, args: &[Val]) -> String {
    let mut out = String::new();
    let chars: Vec<char> = format.chars().collect();
    let mut next = 0usize;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        if c != '%' {
            out.push(c);
            continue;
        }
        let (mut minus, mut plus, mut zero) = (false, false, false);
        while let Some(&f) = chars.get(i) {
            match f {
                '-' => minus = true,
                '+' => plus = true,
                '0' => zero = true,
                ' ' | '#' => {}
                _ => break,
            }
            i += 1;
        }
        let mut width = None::<usize>;
        while let Some(d) = chars.get(i).and_then(|c| c.to_digit(10)) {
            width = Some(width.unwrap_or(0) * 10 + d as usize);
            i += 1;
        }
        let mut prec = None::<usize>;
        if chars.get(i) == Some(&'.') {
            i += 1;
            let mut p = 0usize;
            while let Some(d) = chars.get(i).and_then(|c| c.to_digit(10)) {
                p = p * 10 + d as usize;
                i += 1;
            }
            prec = Some(p);
        }
        let Some(&verb) = chars.get(i) else {
            out.push_str("%!(NOVERB)");
            break;
        };
        i += 1;
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(next) else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        next += 1;
        let bad = || format!("%!{verb}({}={})", arg.go_type(), arg.print());
        let numeric = matches!(arg, Val::Num(_) | Val::Int(_));
        let mut s = match (verb, arg) {
            ('v', _) => arg.print(),
            ('s', Val::Str(s)) => s.clone(),
            ('s', Val::Map(_)) => arg.print(),
            ('q', Val::Str(s)) => serde_json::to_string(s).unwrap_or_default(),
            ('d', Val::Int(n)) => n.to_string(),
            ('f' | 'F', Val::Num(v)) => gofmt::fmt_f(*v, prec.unwrap_or(6)),
            ('e', Val::Num(v)) => gofmt::fmt_e(*v, Some(prec.unwrap_or(6))),
            ('g', Val::Num(v)) => gofmt::fmt_g(*v, prec),
            _ => bad(),
        };
        if let (Some(p), 's', Val::Str(_)) = (prec, verb, arg) {
            s = s.chars().take(p).collect();
        }
        if plus && numeric && !s.starts_with('-') {
            s.insert(0, '+');
        }
        if let Some(w) = width {
            let len = s.chars().count();
            if len < w {
                let pad = w - len;
                if minus {
                    s.push_str(&" ".repeat(pad));
                } else if zero && numeric {
                    let at = usize::from(s.starts_with(['-', '+']));
                    s.insert_str(at, &"0".repeat(pad));
                } else {
                    s.insert_str(0, &" ".repeat(pad));
                }
            }
        }
        out.push_str(&s);
    }
    if next < args.len() {
        let extra: Vec<String> = args[next..]
            .iter()
            .map(|a| format!("{}={}", a.go_type(), a.print()))
            .collect();
        out.push_str(&format!("%!(EXTRA {})", extra.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str, value: f64) -> String {
        let labels: BTreeMap<String, String> = [("instance", "web-1"), ("job", "node")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let ext = BTreeMap::new();
        Template::parse(t).unwrap().render(&TemplateData {
            labels: &labels,
            value,
            external_labels: &ext,
            external_url: "http://nines",
        })
    }

    #[test]
    fn labels_value_and_functions_render_as_prometheus() {
        assert_eq!(
            render("{{ $labels.instance }} is down", 0.0),
            "web-1 is down"
        );
        assert_eq!(render("{{.Labels.job}}={{ .Value }}", 2.5), "node=2.5");
        assert_eq!(render("v={{ $value }}", 1e6), "v=1e+06");
        assert_eq!(render("{{ $labels }}", 0.0), "map[instance:web-1 job:node]");
        assert_eq!(render("{{ $value | humanize }}B", 1234.0), "1.234kB");
        assert_eq!(render("{{ humanize $value }}", 0.5), "500m");
        assert_eq!(
            render("{{ $value | humanizeDuration }}", 3661.0),
            "1h 1m 1s"
        );
        assert_eq!(render("{{ printf \"%.2f\" $value }}%", 12.3456), "12.35%");
        assert_eq!(render("{{ $value | printf \"%.1f\" }}", 1.0), "1.0");
        assert_eq!(render("{{ $value | humanizePercentage }}", 0.5), "50%");
        assert_eq!(render("{{ $labels.missing }}.", 0.0), ".");
        assert_eq!(render("{{ index $labels \"job\" }}", 0.0), "node");
        assert_eq!(render("a {{- \" b \" -}} c", 0.0), "a b c");
        assert_eq!(render("x{{/* note */}}y", 0.0), "xy");
        assert_eq!(
            render("{{ printf \"%d\" $value }}", 1.5),
            "%!d(float64=1.5)"
        );
        assert_eq!(render("{{ $labels.job | toUpper }}", 0.0), "NODE");
        assert_eq!(render("no actions", 0.0), "no actions");
    }

    #[test]
    fn function_errors_render_like_prometheus_and_never_panic() {
        let out = render("{{ $labels.job | humanize }}", 0.0);
        assert!(out.starts_with("<error expanding template:"), "{out}");
    }

    #[test]
    fn unsupported_or_malformed_templates_are_refused_at_load() {
        for (t, want) in [
            (
                "{{ if $value }}x{{ end }}",
                "\"if\" actions are not supported",
            ),
            ("{{ range $labels }}{{ end }}", "\"range\""),
            ("{{ $value ", "unclosed action"),
            ("{{ query \"up\" }}", "function \"query\" not defined"),
            ("{{ $foo }}", "undefined variable"),
            ("{{ humanize }}", "wrong number of args"),
            ("{{ $value | $labels }}", "non executable command"),
            ("{{ (humanize $value) }}", "parentheses"),
            ("{{ $x := 1 }}", "undefined variable"),
        ] {
            let e = Template::parse(t).unwrap_err();
            assert!(e.contains(want), "{t}: {e}");
        }
    }
}
