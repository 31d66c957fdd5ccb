//! Topic access rules.

use super::{Actor, Ops, OpsError};
use crate::auth::acl::{Action, Effect, Rule, Subject};

/// A rule with the id it is stored under.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleEntry {
    pub id: i64,
    pub rule: Rule,
}

/// Builds a rule from its four words, as the CLI and the console's form take them: subject (`user:NAME`,
/// `role:NAME`, `anyone`, `anonymous`), effect (`allow`, `deny`), action (`publish`, `subscribe`, `both`) and a
/// topic filter (`%u` and `%c` stand for the user name and the client id). The filter is checked when added.
pub fn parse_rule(subject: &str, effect: &str, action: &str, filter: &str) -> Result<Rule, OpsError> {
    let subject = match subject.split_once(':') {
        Some(("user", name)) if !name.is_empty() => Subject::User(name.to_owned()),
        Some(("role", name)) if !name.is_empty() => Subject::Role(name.to_owned()),
        None if subject == "anyone" => Subject::Anyone,
        None if subject == "anonymous" => Subject::Anonymous,
        _ => {
            return Err(OpsError::Invalid(format!(
                "subject {subject:?}: use user:NAME, role:NAME, anyone or anonymous"
            )));
        }
    };
    let effect = match effect {
        "allow" => Effect::Allow,
        "deny" => Effect::Deny,
        other => return Err(OpsError::Invalid(format!("effect {other:?}: use allow or deny"))),
    };
    let action = match action {
        "publish" => Action::Publish,
        "subscribe" => Action::Subscribe,
        "both" => Action::Both,
        other => return Err(OpsError::Invalid(format!("action {other:?}: use publish, subscribe or both"))),
    };
    Ok(Rule::new(subject, effect, action, filter.to_owned()))
}

impl Ops {
    /// Adds a rule; returns its id.
    pub async fn add_rule(&self, rule: &Rule, actor: &Actor) -> Result<i64, OpsError> {
        Ok(self.security.add_rule(rule, actor.as_str()).await?)
    }

    pub async fn delete_rule(&self, id: i64, actor: &Actor) -> Result<(), OpsError> {
        Ok(self.security.delete_rule(id, actor.as_str()).await?)
    }

    pub async fn list_rules(&self) -> Result<Vec<RuleEntry>, OpsError> {
        Ok(self.security.list_rules().await?.into_iter().map(|(id, rule)| RuleEntry { id, rule }).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_parsed_from_their_four_words_with_clear_refusals() {
        let rule = parse_rule("role:operators", "allow", "both", "plant/a/#").unwrap();
        assert_eq!(
            rule,
            Rule::new(Subject::Role("operators".into()), Effect::Allow, Action::Both, "plant/a/#")
        );
        for (subject, effect, action, expected) in [
            ("user:", "allow", "both", "subject"),
            ("group:x", "allow", "both", "subject"),
            ("anyone", "permit", "both", "effect"),
            ("anyone", "allow", "read", "action"),
        ] {
            let e = parse_rule(subject, effect, action, "a").unwrap_err().to_string();
            assert!(e.starts_with(expected), "{e}");
        }
    }
}
