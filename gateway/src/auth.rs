//! Who may use the gateway: customer accounts and agent enrolment tokens.
//!
//! Secrets are compared in constant time and never printed: `Debug` shows names
//! only.

use exitpool_protocol::Secret;
use std::collections::HashMap;
use subtle::ConstantTimeEq;

/// Compares two secrets without leaking, through timing, where they differ.
fn secrets_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Why a `NAME:PASSWORD` argument was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// No colon, or an empty name or password.
    #[error("expected NAME:PASSWORD with both parts non-empty")]
    Shape,
    /// The name or password contains `-`, which starts targeting parameters.
    #[error("customer names and passwords may not contain '-' (it starts targeting parameters like -country-us)")]
    Dash,
    /// Characters that cannot travel in Basic auth or a proxy URL.
    #[error("customer names may only contain letters, digits, '_' and '.'")]
    NameCharacters,
}

/// A customer account.
#[derive(Clone)]
pub struct Customer {
    /// The base user name: what authenticates, what is logged.
    pub name: String,
    password: Secret,
}

impl std::fmt::Debug for Customer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Customer")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Customer {
    /// Parses `NAME:PASSWORD` as given to `--user`.
    pub fn parse(spec: &str) -> Result<Customer, CredentialError> {
        let (name, password) = spec.split_once(':').ok_or(CredentialError::Shape)?;
        if name.is_empty() || password.is_empty() {
            return Err(CredentialError::Shape);
        }
        if name.contains('-') || password.contains('-') {
            return Err(CredentialError::Dash);
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            return Err(CredentialError::NameCharacters);
        }
        Ok(Customer {
            name: name.to_owned(),
            password: Secret(password.to_owned()),
        })
    }
}

/// All customer accounts.
#[derive(Debug, Clone, Default)]
pub struct Users {
    by_name: HashMap<String, Customer>,
}

impl Users {
    /// Accounts from a list (later entries replace earlier ones with the same name).
    pub fn new(customers: impl IntoIterator<Item = Customer>) -> Users {
        Users {
            by_name: customers
                .into_iter()
                .map(|customer| (customer.name.clone(), customer))
                .collect(),
        }
    }

    /// The account for `name` if `password` is right; `None` otherwise, with no
    /// hint as to which part was wrong.
    pub fn authenticate(&self, name: &str, password: &str) -> Option<&Customer> {
        let customer = self.by_name.get(name)?;
        secrets_equal(customer.password.expose(), password).then_some(customer)
    }

    /// Number of accounts.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are no accounts.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// The tokens agents may enrol with.
#[derive(Clone, Default)]
pub struct AgentTokens {
    tokens: Vec<Secret>,
}

impl std::fmt::Debug for AgentTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AgentTokens({} tokens)", self.tokens.len())
    }
}

impl AgentTokens {
    /// Accepts exactly `tokens`.
    pub fn new(tokens: impl IntoIterator<Item = String>) -> AgentTokens {
        AgentTokens {
            tokens: tokens.into_iter().map(Secret).collect(),
        }
    }

    /// Whether `token` is one of the accepted tokens. Every token is compared, so
    /// timing does not reveal which one nearly matched.
    pub fn accepts(&self, token: &str) -> bool {
        self.tokens.iter().fold(false, |found, known| {
            secrets_equal(known.expose(), token) | found
        })
    }

    /// Whether no token is configured (no agent can join).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_specs_are_checked() {
        assert!(Customer::parse("alice:s3cret").is_ok());
        assert_eq!(
            Customer::parse("alice").unwrap_err(),
            CredentialError::Shape
        );
        assert_eq!(Customer::parse(":x").unwrap_err(), CredentialError::Shape);
        assert_eq!(Customer::parse("a-b:x").unwrap_err(), CredentialError::Dash);
        assert_eq!(Customer::parse("a:x-y").unwrap_err(), CredentialError::Dash);
        assert_eq!(
            Customer::parse("a b:x").unwrap_err(),
            CredentialError::NameCharacters
        );
    }

    #[test]
    fn wrong_password_and_unknown_user_both_fail() {
        let users = Users::new([Customer::parse("alice:s3cret").unwrap()]);
        assert_eq!(users.authenticate("alice", "s3cret").unwrap().name, "alice");
        assert!(users.authenticate("alice", "wrong").is_none());
        assert!(users.authenticate("bob", "s3cret").is_none());
    }

    #[test]
    fn debug_output_hides_secrets() {
        let customer = Customer::parse("alice:s3cret").unwrap();
        let tokens = AgentTokens::new(["t0ken".to_owned()]);
        let text = format!("{customer:?} {tokens:?}");
        assert!(
            !text.contains("s3cret") && !text.contains("t0ken"),
            "{text}"
        );
    }
}
