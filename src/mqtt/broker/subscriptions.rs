//! The subscription tree: topic filters split into levels, so that matching a topic costs the depth of the topic
//! rather than the number of subscriptions.

use std::collections::HashMap;

use super::message::ClientId;
use crate::mqtt::codec::SubscriptionOptions;

#[derive(Debug, Default)]
pub(super) struct SubscriptionTree {
    root: Node,
    count: usize,
}

#[derive(Debug, Default)]
struct Node {
    /// Keyed by level; the wildcards `+` and `#` are children like any other level.
    children: HashMap<Box<str>, Node>,
    subscribers: Vec<Subscriber>,
    shared: Vec<SharedGroup>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Subscriber {
    pub(super) client: ClientId,
    pub(super) options: SubscriptionOptions,
    pub(super) id: Option<u32>,
    /// Whose access rules decide each delivery; `None` for in-process links.
    pub(super) principal: Option<std::sync::Arc<crate::auth::Identity>>,
}

/// The members of one `$share/{group}/{filter}`: each message goes to one of them, in turn.
#[derive(Debug)]
struct SharedGroup {
    name: Box<str>,
    members: Vec<Subscriber>,
    next: usize,
}

/// One subscription that matched a topic.
#[derive(Debug, Clone)]
pub(super) struct Matched {
    pub(super) subscriber: Subscriber,
    pub(super) shared: bool,
}

impl SubscriptionTree {
    /// Adds or replaces a subscription; true if it replaced one with the same filter (and group).
    pub(super) fn insert(&mut self, group: Option<&str>, filter: &str, subscriber: Subscriber) -> bool {
        let node = filter
            .split('/')
            .fold(&mut self.root, |node, level| node.children.entry(level.into()).or_default());
        let members = match group {
            None => &mut node.subscribers,
            Some(group) => {
                let index = match node.shared.iter().position(|g| &*g.name == group) {
                    Some(i) => i,
                    None => {
                        node.shared.push(SharedGroup { name: group.into(), members: Vec::new(), next: 0 });
                        node.shared.len() - 1
                    }
                };
                match node.shared.get_mut(index) {
                    Some(g) => &mut g.members,
                    None => return false,
                }
            }
        };
        match members.iter_mut().find(|s| s.client == subscriber.client) {
            Some(existing) => {
                *existing = subscriber;
                true
            }
            None => {
                members.push(subscriber);
                self.count += 1;
                false
            }
        }
    }

    /// Removes a client's subscription; true if there was one.
    pub(super) fn remove(&mut self, group: Option<&str>, filter: &str, client: &ClientId) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove_at(&mut self.root, &levels, group, client);
        if removed {
            self.count -= 1;
        }
        removed
    }

    pub(super) fn len(&self) -> usize {
        self.count
    }

    /// Every subscription matching `topic`. For each shared group one member is chosen, round robin, preferring
    /// members for which `online` holds.
    pub(super) fn matches(
        &mut self,
        topic: &str,
        online: &dyn Fn(&ClientId) -> bool,
        out: &mut Vec<Matched>,
    ) {
        let levels: Vec<&str> = topic.split('/').collect();
        // Topics beginning with `$` are not matched by a filter that begins with a wildcard.
        let dollar = topic.starts_with('$');
        collect(&mut self.root, &levels, dollar, online, out);
    }
}

fn collect(
    node: &mut Node,
    levels: &[&str],
    protect_dollar: bool,
    online: &dyn Fn(&ClientId) -> bool,
    out: &mut Vec<Matched>,
) {
    let Some((level, rest)) = levels.split_first() else {
        take_all(node, online, out);
        // `a/#` also matches `a`.
        if let Some(hash) = node.children.get_mut("#") {
            take_all(hash, online, out);
        }
        return;
    };
    if let Some(child) = node.children.get_mut(*level) {
        collect(child, rest, false, online, out);
    }
    if protect_dollar {
        return;
    }
    if let Some(plus) = node.children.get_mut("+") {
        collect(plus, rest, false, online, out);
    }
    if let Some(hash) = node.children.get_mut("#") {
        take_all(hash, online, out);
    }
}

fn take_all(node: &mut Node, online: &dyn Fn(&ClientId) -> bool, out: &mut Vec<Matched>) {
    out.extend(node.subscribers.iter().map(|s| Matched { subscriber: s.clone(), shared: false }));
    for group in &mut node.shared {
        if let Some(member) = group.pick(online) {
            out.push(Matched { subscriber: member, shared: true });
        }
    }
}

impl SharedGroup {
    fn pick(&mut self, online: &dyn Fn(&ClientId) -> bool) -> Option<Subscriber> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.next % n;
        let chosen =
            (0..n).map(|k| (start + k) % n).find(|&i| self.members.get(i).is_some_and(|m| online(&m.client)));
        let index = chosen.unwrap_or(start);
        self.next = index + 1;
        self.members.get(index).cloned()
    }
}

fn remove_at(node: &mut Node, levels: &[&str], group: Option<&str>, client: &ClientId) -> bool {
    let Some((level, rest)) = levels.split_first() else {
        return match group {
            None => remove_member(&mut node.subscribers, client),
            Some(name) => {
                let Some(g) = node.shared.iter_mut().find(|g| &*g.name == name) else { return false };
                let removed = remove_member(&mut g.members, client);
                node.shared.retain(|g| !g.members.is_empty());
                removed
            }
        };
    };
    let Some(child) = node.children.get_mut(*level) else { return false };
    let removed = remove_at(child, rest, group, client);
    if child.subscribers.is_empty() && child.shared.is_empty() && child.children.is_empty() {
        node.children.remove(*level);
    }
    removed
}

fn remove_member(members: &mut Vec<Subscriber>, client: &ClientId) -> bool {
    let before = members.len();
    members.retain(|s| &s.client != client);
    members.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(client: &str) -> Subscriber {
        Subscriber {
            client: ClientId::new(client),
            options: SubscriptionOptions::default(),
            id: None,
            principal: None,
        }
    }

    fn matching(tree: &mut SubscriptionTree, topic: &str) -> Vec<String> {
        let mut out = Vec::new();
        tree.matches(topic, &|_| true, &mut out);
        let mut names: Vec<String> = out.into_iter().map(|m| m.subscriber.client.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn wildcards_and_dollar_topics() {
        let mut tree = SubscriptionTree::default();
        tree.insert(None, "a/b", sub("exact"));
        tree.insert(None, "a/+", sub("plus"));
        tree.insert(None, "a/#", sub("hash"));
        tree.insert(None, "#", sub("all"));
        tree.insert(None, "+/b", sub("plusb"));
        tree.insert(None, "$SYS/#", sub("sys"));
        assert_eq!(matching(&mut tree, "a/b"), ["all", "exact", "hash", "plus", "plusb"]);
        assert_eq!(matching(&mut tree, "a"), ["all", "hash"]);
        assert_eq!(matching(&mut tree, "a/"), ["all", "hash", "plus"]);
        assert_eq!(matching(&mut tree, "$SYS/x"), ["sys"]);
        assert_eq!(matching(&mut tree, "$SYS/b"), ["sys"], "+/b must not match a $ topic");
        assert_eq!(tree.len(), 6);
    }

    #[test]
    fn replace_and_remove_prune() {
        let mut tree = SubscriptionTree::default();
        assert!(!tree.insert(None, "x/y/z", sub("c")));
        assert!(tree.insert(None, "x/y/z", sub("c")));
        assert_eq!(tree.len(), 1);
        assert!(tree.remove(None, "x/y/z", &ClientId::new("c")));
        assert!(!tree.remove(None, "x/y/z", &ClientId::new("c")));
        assert!(tree.root.children.is_empty(), "empty branches are pruned");
        assert_eq!(tree.len(), 0);
    }

    #[test]
    fn shared_groups_take_turns_and_prefer_online_members() {
        let mut tree = SubscriptionTree::default();
        tree.insert(Some("g"), "s/#", sub("one"));
        tree.insert(Some("g"), "s/#", sub("two"));
        tree.insert(Some("h"), "s/#", sub("three"));
        let mut picks = Vec::new();
        for _ in 0..4 {
            let mut out = Vec::new();
            tree.matches("s/1", &|_| true, &mut out);
            assert_eq!(out.len(), 2, "one member per group");
            picks.extend(out.into_iter().filter(|m| m.subscriber.client.as_str() != "three"));
        }
        let names: Vec<_> = picks.iter().map(|m| m.subscriber.client.as_str()).collect();
        assert_eq!(names, ["one", "two", "one", "two"]);
        let mut out = Vec::new();
        tree.matches("s/1", &|c| c.as_str() == "two", &mut out);
        assert!(out.iter().any(|m| m.subscriber.client.as_str() == "two"));
        assert!(tree.remove(Some("g"), "s/#", &ClientId::new("one")));
        assert_eq!(tree.len(), 2);
    }
}
