//! Per-vector payloads and filter expressions.
//!
//! A payload is a JSON object: numbers, strings, and lists of strings (tags). A filter is a
//! conjunction of clauses joined by `&&` or `and`: `key=value` (number equality, string equality,
//! or list membership), `key!=value`, and numeric `key<v`, `key<=v`, `key>v`, `key>=v`.
//! Example: `color=red && year>=2000 && tags=sale`.

use std::collections::BTreeMap;

use crate::IndexError;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Value {
    Num(f64),
    Str(String),
    List(Vec<String>),
}

pub type Payload = BTreeMap<String, Value>;

#[derive(Clone, Copy, Debug, PartialEq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Debug)]
struct Clause {
    key: String,
    op: CmpOp,
    text: String,
    num: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct Filter {
    clauses: Vec<Clause>,
}

impl Filter {
    pub fn parse(expr: &str) -> Result<Filter, IndexError> {
        let mut clauses = Vec::new();
        for part in expr.split("&&").flat_map(|p| p.split(" and ")) {
            let part = part.trim();
            if part.is_empty() {
                return Err(IndexError::Filter(format!("empty clause in {expr:?}")));
            }
            // Longest operators first so `<=` is not read as `<`.
            let ops = [("<=", CmpOp::Le), (">=", CmpOp::Ge), ("!=", CmpOp::Ne), ("=", CmpOp::Eq), ("<", CmpOp::Lt), (">", CmpOp::Gt)];
            let (pos, sym, op) = ops
                .iter()
                .filter_map(|(s, o)| part.find(s).map(|p| (p, *s, *o)))
                .min_by_key(|(p, s, _)| (*p, std::cmp::Reverse(s.len())))
                .ok_or_else(|| IndexError::Filter(format!("clause {part:?} has no operator (=, !=, <, <=, >, >=)")))?;
            let key = part[..pos].trim().to_string();
            let text = part[pos + sym.len()..].trim().to_string();
            if key.is_empty() || text.is_empty() {
                return Err(IndexError::Filter(format!("clause {part:?} needs a key and a value")));
            }
            let num = text.parse::<f64>().ok();
            if matches!(op, CmpOp::Lt | CmpOp::Le | CmpOp::Gt | CmpOp::Ge) && num.is_none() {
                return Err(IndexError::Filter(format!("clause {part:?}: `{sym}` needs a number")));
            }
            clauses.push(Clause { key, op, text, num });
        }
        Ok(Filter { clauses })
    }

    pub fn matches(&self, p: &Payload) -> bool {
        self.clauses.iter().all(|c| {
            let v = p.get(&c.key);
            match (c.op, v) {
                (CmpOp::Eq, Some(Value::Num(x))) => c.num == Some(*x),
                (CmpOp::Eq, Some(Value::Str(s))) => *s == c.text,
                (CmpOp::Eq, Some(Value::List(l))) => l.contains(&c.text),
                (CmpOp::Ne, Some(Value::Num(x))) => c.num != Some(*x),
                (CmpOp::Ne, Some(Value::Str(s))) => *s != c.text,
                (CmpOp::Ne, Some(Value::List(l))) => !l.contains(&c.text),
                (CmpOp::Ne, None) => true,
                (op, Some(Value::Num(x))) => {
                    let y = c.num.unwrap();
                    match op {
                        CmpOp::Lt => *x < y,
                        CmpOp::Le => *x <= y,
                        CmpOp::Gt => *x > y,
                        CmpOp::Ge => *x >= y,
                        _ => unreachable!(),
                    }
                }
                _ => false,
            }
        })
    }
}

/// One bit per point: which points a search may return.
#[derive(Clone, Debug)]
pub struct Bitset {
    words: Vec<u64>,
    count: usize,
}

impl Bitset {
    pub fn from_fn(n: usize, f: impl Fn(usize) -> bool) -> Bitset {
        let mut words = vec![0u64; n.div_ceil(64)];
        let mut count = 0;
        for i in 0..n {
            if f(i) {
                words[i / 64] |= 1 << (i % 64);
                count += 1;
            }
        }
        Bitset { words, count }
    }
    #[inline]
    pub fn contains(&self, i: usize) -> bool {
        self.words.get(i / 64).is_some_and(|w| w >> (i % 64) & 1 == 1)
    }
    pub fn count(&self) -> usize {
        self.count
    }
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(wi * 64 + b)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_match() {
        let p: Payload = serde_json::from_str(r#"{"color": "red", "year": 2001, "tags": ["sale", "new"]}"#).unwrap();
        for (e, want) in [
            ("color=red", true),
            ("color=blue", false),
            ("year>=2001 && year<2002", true),
            ("year>2001", false),
            ("tags=sale and color!=blue", true),
            ("tags=old", false),
            ("missing!=3", true),
            ("missing=3", false),
        ] {
            assert_eq!(Filter::parse(e).unwrap().matches(&p), want, "{e}");
        }
        assert!(Filter::parse("year<abc").is_err());
        assert!(Filter::parse("nonsense").is_err());
        let b = Bitset::from_fn(130, |i| i % 3 == 0);
        assert_eq!(b.count(), 44);
        assert_eq!(b.iter().take(3).collect::<Vec<_>>(), vec![0, 3, 6]);
        assert!(b.contains(129) && !b.contains(128));
    }
}
