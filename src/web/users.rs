//! Users and access: users (add, reset a password, set roles, delete), access rules (list, add, delete), a
//! "test access" form, and the import of Mosquitto's password and ACL files.

use axum::Form;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};

use super::session::Signed;
use super::{AppState, Nav, WebError, act_then_back, back_to, render};
use crate::auth::Identity;
use crate::auth::acl::{Action, Effect, Subject};
use crate::mqtt::broker::Authorizer;
use crate::ops::rules::parse_rule;

#[derive(askama::Template)]
#[template(path = "users.html")]
struct UsersPage {
    nav: Nav,
    notice: Option<String>,
    error: Option<String>,
    users: Vec<UserRow>,
    rules: Vec<RuleRow>,
    test: AccessTest,
    /// Machine tokens: name and when last used.
    tokens: Vec<(String, String)>,
    /// A token just made: its name and value, shown this once.
    new_token: Option<(String, String)>,
}

struct UserRow {
    username: String,
    roles: Vec<String>,
    created: String,
}

struct RuleRow {
    id: i64,
    subject: String,
    effect: &'static str,
    action: &'static str,
    filter: String,
}

#[derive(Debug, Default)]
struct AccessTest {
    user: String,
    client: String,
    topic: String,
    answer: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct UsersQuery {
    notice: Option<String>,
    error: Option<String>,
    test_user: Option<String>,
    test_client: Option<String>,
    test_topic: Option<String>,
}

pub(super) async fn users_get(
    signed: Signed,
    State(state): State<AppState>,
    Query(query): Query<UsersQuery>,
) -> Result<Response, WebError> {
    users_page(&signed, &state, query, None).await
}

/// The page, with a token just made shown once (never through a redirect: it would land in the history).
async fn users_page(
    signed: &Signed,
    state: &AppState,
    query: UsersQuery,
    new_token: Option<(String, String)>,
) -> Result<Response, WebError> {
    let users = state
        .ops()
        .list_users()
        .await?
        .into_iter()
        .map(|u| UserRow { username: u.username, roles: u.roles, created: crate::timefmt::format(u.created) })
        .collect();
    let rules = state
        .ops()
        .list_rules()
        .await?
        .into_iter()
        .map(|entry| RuleRow {
            id: entry.id,
            subject: match &entry.rule.subject {
                Subject::User(name) => format!("user:{name}"),
                Subject::Role(name) => format!("role:{name}"),
                Subject::Anyone => "anyone".into(),
                Subject::Anonymous => "anonymous".into(),
            },
            effect: match entry.rule.effect {
                Effect::Allow => "allow",
                Effect::Deny => "deny",
            },
            action: match entry.rule.action {
                Action::Publish => "publish",
                Action::Subscribe => "subscribe",
                Action::Both => "both",
            },
            filter: entry.rule.filter.clone(),
        })
        .collect();
    let test = access_test(state, &query);
    let tokens = state
        .ops()
        .list_tokens()
        .await?
        .into_iter()
        .map(|t| (t.name, t.last_used.map_or_else(|| "never".to_owned(), crate::timefmt::format)))
        .collect();
    let page = UsersPage {
        nav: Nav::of(signed, "users"),
        notice: query.notice,
        error: query.error,
        users,
        rules,
        test,
        tokens,
        new_token,
    };
    Ok(render(&page))
}

/// "May user U with client id C publish or subscribe to topic T?", answered by the rules in force.
fn access_test(state: &AppState, query: &UsersQuery) -> AccessTest {
    let (user, client, topic) = (
        query.test_user.clone().unwrap_or_default(),
        query.test_client.clone().unwrap_or_default(),
        query.test_topic.clone().unwrap_or_default(),
    );
    let answer = (!topic.is_empty()).then(|| {
        if !crate::mqtt::codec::topic::valid_topic_name(&topic) {
            return format!("{topic:?} is not a valid topic name.");
        }
        let who = if user.is_empty() {
            Identity::anonymous(client.as_str())
        } else {
            Identity::user(user.as_str(), client.as_str())
        };
        let security = state.ops().security();
        let may = |yes: bool| if yes { "may" } else { "may not" };
        let name = if user.is_empty() { "an anonymous client".to_owned() } else { format!("user {user}") };
        format!(
            "{name} {} publish to {topic} and {} receive it.",
            may(security.can_publish(&who, &topic)),
            may(security.can_read(&who, &topic))
        )
    });
    AccessTest { user, client, topic, answer }
}

/// Where a change goes back to, with its notice or the error of what was refused.
const PAGE: &str = "/users";

fn roles(text: &str) -> Vec<String> {
    text.split([',', ' ']).map(str::trim).filter(|r| !r.is_empty()).map(str::to_owned).collect()
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct AddUser {
    username: String,
    password: String,
    #[serde(default)]
    roles: String,
}

pub(super) async fn add_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<AddUser>,
) -> Response {
    act_then_back(PAGE, signed.require_admin(), async || {
        state
            .ops()
            .add_user(form.username.trim(), &form.password, &roles(&form.roles), &signed.actor())
            .await?;
        Ok(format!("User {} added.", form.username.trim()))
    })
    .await
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct SetPassword {
    username: String,
    password: String,
}

pub(super) async fn password_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<SetPassword>,
) -> Response {
    act_then_back(PAGE, signed.require_admin(), async || {
        state.ops().set_password(&form.username, &form.password, &signed.actor()).await?;
        Ok(format!("Password of {} changed.", form.username))
    })
    .await
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct SetRoles {
    username: String,
    #[serde(default)]
    roles: String,
}

pub(super) async fn roles_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<SetRoles>,
) -> Response {
    act_then_back(PAGE, signed.require_admin(), async || {
        let roles = roles(&form.roles);
        if form.username == signed.user && !roles.iter().any(|r| r == crate::auth::ADMIN_ROLE) {
            return Err(WebError::BadRequest("You cannot take the admin role from yourself.".into()));
        }
        state.ops().set_roles(&form.username, &roles, &signed.actor()).await?;
        Ok(format!("Roles of {} set.", form.username))
    })
    .await
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct DeleteUser {
    username: String,
}

pub(super) async fn delete_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<DeleteUser>,
) -> Response {
    act_then_back(PAGE, signed.require_admin(), async || {
        if form.username == signed.user {
            return Err(WebError::BadRequest("You cannot delete yourself.".into()));
        }
        state.ops().delete_user(&form.username, &signed.actor()).await?;
        state.inner.sessions.remove_user(&form.username);
        Ok(format!("User {} deleted.", form.username))
    })
    .await
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct Import {
    #[serde(default)]
    passwd: String,
    #[serde(default)]
    acl: String,
}

pub(super) async fn import_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<Import>,
) -> Response {
    act_then_back(PAGE, signed.require_admin(), async || {
        let text = |t: &str| (!t.trim().is_empty()).then(|| t.to_owned());
        let (passwd, acl) = (text(&form.passwd), text(&form.acl));
        let summary =
            state.ops().import_mosquitto(passwd.as_deref(), acl.as_deref(), &signed.actor()).await?;
        let mut notice = format!("Imported {} users and {} rules.", summary.users, summary.rules);
        for warning in summary.warnings {
            notice.push_str(&format!(" Warning: {warning}."));
        }
        Ok(notice)
    })
    .await
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct AddRule {
    subject: String,
    effect: String,
    action: String,
    filter: String,
}

pub(super) async fn rule_add_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<AddRule>,
) -> Response {
    act_then_back(PAGE, signed.require_admin(), async || {
        let rule = parse_rule(form.subject.trim(), &form.effect, &form.action, form.filter.trim())?;
        let id = state.ops().add_rule(&rule, &signed.actor()).await?;
        Ok(format!("Rule #{id} added."))
    })
    .await
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct DeleteRule {
    id: i64,
}

pub(super) async fn rule_delete_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<DeleteRule>,
) -> Response {
    act_then_back(PAGE, signed.require_admin(), async || {
        state.ops().delete_rule(form.id, &signed.actor()).await?;
        Ok(format!("Rule #{} deleted.", form.id))
    })
    .await
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct TokenForm {
    name: String,
}

pub(super) async fn token_add_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<TokenForm>,
) -> Response {
    let made = async {
        signed.require_admin()?;
        Ok::<_, WebError>(state.ops().add_token(form.name.trim(), &signed.actor()).await?)
    }
    .await;
    match made {
        Ok(token) => {
            users_page(&signed, &state, UsersQuery::default(), Some((form.name.trim().to_owned(), token)))
                .await
                .unwrap_or_else(IntoResponse::into_response)
        }
        Err(e) => back_to(PAGE, Err(e)),
    }
}

pub(super) async fn token_delete_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<TokenForm>,
) -> Response {
    act_then_back(PAGE, signed.require_admin(), async || {
        state.ops().delete_token(&form.name, &signed.actor()).await?;
        Ok(format!("Token {} deleted.", form.name))
    })
    .await
}
