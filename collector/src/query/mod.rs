//! PromQL evaluation over a [`querier::Querier`]: parse an expression, then
//! evaluate it at one instant or over a range of steps, as Prometheus's
//! `/api/v1/query` and `/api/v1/query_range` do.
//!
//! This module never writes to storage and never formats HTTP responses;
//! it returns [`Value`]s and [`QueryError`]s that carry their Prometheus
//! `errorType` and status.

mod aggregate;
mod binary;
mod dialect;
mod engine;
mod error;
pub(crate) mod eval;
#[cfg(test)]
pub(crate) mod fixtures;
mod functions;
mod go_time;
mod histogram;
#[cfg(test)]
pub(crate) mod in_memory;
mod label_sets;
mod over_time;
mod quantile;
pub mod querier;
mod range_eval;
pub mod rollup;
mod rollup_read;
mod subquery;
mod syntax;
mod value;

/// The message for `expr`, which the PromQL parser refused with
/// `parser_message`, as Prometheus 2.42 words it: `line:col: parse error:
/// ...` at the first token that cannot stand there.
pub fn locate_parse_error(expr: &str, parser_message: &str) -> String {
    syntax::locate(expr, parser_message)
}

/// Deepest bracket nesting a query may have.
pub const MAX_NESTING: usize = 256;
/// Most operators a query may have (operator characters outside label
/// matchers, and the `and`, `or`, `unless`, `atan2` keywords).
pub const MAX_OPERATORS: usize = 384;

/// Parses `expr` with the PromQL parser, after refusing a query whose
/// nesting or operator count could exhaust a thread's stack in parsing,
/// evaluating or dropping its syntax tree (the parser and evaluator
/// recurse). Errors are worded as Prometheus 2.42 words them.
pub fn parse_checked(expr: &str) -> Result<promql_parser::parser::Expr, String> {
    check_size(expr)?;
    promql_parser::parser::parse(expr).map_err(|e| locate_parse_error(expr, &e))
}

/// Refuses, with the position, a query nested deeper than [`MAX_NESTING`]
/// brackets or with more than [`MAX_OPERATORS`] operators (outside
/// strings, comments and label matchers).
pub fn check_size(expr: &str) -> Result<(), String> {
    let mut depth = 0usize;
    let mut braces = 0usize;
    let mut word = String::new();
    let mut operators = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut comment = false;
    let (mut line, mut line_start) = (1usize, 0usize);
    for (i, c) in expr.char_indices() {
        if c == '\n' {
            line += 1;
            line_start = i + 1;
            comment = false;
            continue;
        }
        if comment {
            continue;
        }
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' && q != '`' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        let at = |what: String| format!("{line}:{}: parse error: {what}", i - line_start + 1);
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c.to_ascii_lowercase());
            continue;
        }
        if braces == 0 && matches!(word.as_str(), "and" | "or" | "unless" | "atan2") {
            operators += 1;
            if operators > MAX_OPERATORS {
                return Err(at(format!(
                    "expression has more than {MAX_OPERATORS} operators"
                )));
            }
        }
        word.clear();
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '#' => comment = true,
            '(' | '[' | '{' => {
                depth += 1;
                braces += usize::from(c == '{');
                if depth > MAX_NESTING {
                    return Err(at(format!(
                        "expression nested deeper than {MAX_NESTING} brackets"
                    )));
                }
            }
            ')' | ']' | '}' => {
                depth = depth.saturating_sub(1);
                if c == '}' {
                    braces = braces.saturating_sub(1);
                }
            }
            '+' | '-' | '*' | '/' | '%' | '^' | '=' | '!' | '<' | '>' if braces == 0 => {
                operators += 1;
                if operators > MAX_OPERATORS {
                    return Err(at(format!(
                        "expression has more than {MAX_OPERATORS} operators"
                    )));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

pub use engine::{DEFAULT_LOOKBACK_MS, DEFAULT_MAX_SAMPLES, Engine, MAX_RANGE_STEPS};
pub use error::QueryError;
pub use rollup_read::{MIN_SPAN_BUCKETS, RESOLUTIONS, RollupUse};
pub use value::{InstantSample, RangeSeries, STALE_MARKER_BITS, Value, is_stale_marker};

#[cfg(test)]
mod size_tests {
    use super::*;

    fn eval_in_small_stack(expr: String) -> Result<(), String> {
        // A tokio worker's default stack: what a query runs on.
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let engine = Engine::default();
                let q = in_memory::InMemoryQuerier::new(Vec::new());
                engine
                    .instant(&q, &expr, 1_700_000_000_000)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .unwrap()
            .join()
            .expect("no stack overflow")
    }

    #[test]
    fn the_deepest_and_longest_allowed_queries_run_in_a_small_stack() {
        let deep = format!("{}1{}", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING));
        assert!(check_size(&deep).is_ok());
        eval_in_small_stack(deep).unwrap();
        let long = format!("1{}", "+1".repeat(MAX_OPERATORS));
        assert!(check_size(&long).is_ok());
        eval_in_small_stack(long).unwrap();
        let ors = format!("vector(1){}", " or vector(1)".repeat(MAX_OPERATORS));
        assert!(check_size(&ors).is_ok());
        eval_in_small_stack(ors).unwrap();
    }

    #[test]
    fn deeper_or_longer_queries_are_refused_with_the_position() {
        let deep = format!("{}1{}", "(".repeat(20_000), ")".repeat(20_000));
        assert_eq!(
            check_size(&deep).unwrap_err(),
            "1:257: parse error: expression nested deeper than 256 brackets"
        );
        let long = format!("1{}", "+1".repeat(50_000));
        assert!(
            check_size(&long)
                .unwrap_err()
                .starts_with("1:770: parse error:")
        );
        let ors = format!("x{}", " or x".repeat(1000));
        assert!(check_size(&ors).unwrap_err().contains("operators"));
        // Label matchers are not operators.
        let matchers = format!("x{{{}}}", vec!["a!=\"b\""; 1000].join(","));
        assert!(check_size(&matchers).is_ok());
        // Brackets and operators inside strings and comments do not count.
        let quoted = format!("foo{{a=\"{}\"}} # {}\n", "(".repeat(1000), "+".repeat(5000));
        assert!(check_size(&quoted).is_ok());
        assert!(
            eval_in_small_stack(deep)
                .unwrap_err()
                .contains("nested deeper")
        );
    }
}
