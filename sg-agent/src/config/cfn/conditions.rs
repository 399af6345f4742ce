//! Conditions: the template's `Conditions` (Fn::Equals, Fn::And, Fn::Or, Fn::Not and
//! `Condition` references), `Fn::If` in values, and a resource's `Condition`, which leaves the
//! resource out of the stack when false. Each condition is evaluated once; a cycle or a value
//! that cannot be known (a parameter without value) is a [`Why`], reported by the reader only
//! where it decides something sg reads.

use std::rc::Rc;

use super::eval::{Out, Resolver, Why, call};
use crate::config::yaml::Node;

impl Resolver<'_> {
    /// The value of the condition named `name`.
    pub(super) fn condition(&mut self, name: &str) -> Result<bool, Why> {
        match self.cond_cache.get(name) {
            Some(Some(v)) => return v.clone(),
            Some(None) => {
                return Err(Why::new(format!("condition {name} depends on itself")));
            }
            None => {}
        }
        let Some(expr) = self.conditions.as_ref().and_then(|c| c.get(name)).cloned() else {
            return Err(Why::new(format!(
                "there is no condition {name} in Conditions"
            )));
        };
        self.cond_cache.insert(name.to_string(), None);
        let v = self
            .cond_expr(&expr)
            .map_err(|w| Why::new(format!("condition {name}: {}", w.message)).hint_opt(w.hint));
        self.cond_cache.insert(name.to_string(), Some(v.clone()));
        v
    }

    /// A condition expression: a condition function, or `{Condition: Name}`.
    fn cond_expr(&mut self, n: &Rc<Node>) -> Result<bool, Why> {
        let Some((f, arg)) = call(n) else {
            // A literal true/false is what CloudFormation's own condition functions return.
            return match n.scalar().map(str::to_ascii_lowercase).as_deref() {
                Some("true") => Ok(true),
                Some("false") => Ok(false),
                _ => Err(Why::new(format!(
                    "expected a condition function, found {}",
                    n.describe()
                ))),
            };
        };
        let items = || arg.as_seq().map(<[_]>::to_vec).unwrap_or_default();
        match f.as_str() {
            "Condition" => {
                let name = arg
                    .scalar()
                    .ok_or_else(|| Why::new("Condition takes a condition's name"))?;
                self.condition(name)
            }
            "Fn::Equals" => {
                let a = items();
                let [x, y] = a.as_slice() else {
                    return Err(Why::new("Fn::Equals takes a list of two values"));
                };
                Ok(self.comparable(x)? == self.comparable(y)?)
            }
            "Fn::Not" => {
                let a = items();
                let [x] = a.as_slice() else {
                    return Err(Why::new("Fn::Not takes a list of one condition"));
                };
                Ok(!self.cond_expr(x)?)
            }
            "Fn::And" | "Fn::Or" => {
                let a = items();
                if !(2..=10).contains(&a.len()) {
                    return Err(Why::new(format!("{f} takes a list of 2 to 10 conditions")));
                }
                // Every operand is evaluated (CloudFormation validates them all).
                let vals = a
                    .iter()
                    .map(|x| self.cond_expr(x))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(if f == "Fn::And" {
                    vals.iter().all(|v| *v)
                } else {
                    vals.iter().any(|v| *v)
                })
            }
            other => Err(Why::new(format!("{other} is not a condition function"))),
        }
    }

    /// A value compared by Fn::Equals: its text, or a list's items' texts.
    fn comparable(&mut self, n: &Rc<Node>) -> Result<Vec<String>, Why> {
        let Out::Node(v) = self.resolve(n) else {
            return Ok(Vec::new());
        };
        match v.as_seq() {
            Some(items) => items.iter().map(|i| self.text(i)).collect(),
            None => self.text(&v).map(|t| vec![t]),
        }
    }

    /// `Fn::If: [Condition, IfTrue, IfFalse]`.
    pub(super) fn fn_if(&mut self, arg: &Rc<Node>) -> Result<Out, Why> {
        let Some([c, yes, no]) = arg.as_seq() else {
            return Err(Why::new(
                "Fn::If takes [condition name, value if true, value if false]",
            ));
        };
        let name = c
            .scalar()
            .ok_or_else(|| Why::new("Fn::If's first item is a condition's name"))?;
        let chosen = if self.condition(name)? { yes } else { no };
        Ok(self.resolve(&chosen.clone()))
    }
}

impl Why {
    fn hint_opt(mut self, hint: Option<String>) -> Why {
        self.hint = hint;
        self
    }
}
