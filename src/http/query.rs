//! Query strings read strictly: a parameter the route does not know is refused (400), as an
//! unknown body member is, so a misspelt filter never silently returns everything.

use crate::http::error::ApiError;

/// A query string's parameters, each checked against the route's known names.
#[derive(Debug, Default)]
pub struct QueryParams {
    pairs: Vec<(String, String)>,
}

impl QueryParams {
    /// Parses `query` (without `?`). Every name must be in `known`; only those in
    /// `repeatable` may appear more than once.
    pub fn parse(
        query: Option<&str>,
        known: &[&str],
        repeatable: &[&str],
    ) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> =
            form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                .collect();
        for (i, (name, value)) in pairs.iter().enumerate() {
            if !known.contains(&name.as_str()) {
                return Err(ApiError::InvalidParameter(format!(
                    "unknown query parameter `{}`; this route takes: {}",
                    shown(name),
                    known.join(", ")
                )));
            }
            if !repeatable.contains(&name.as_str()) && pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(ApiError::InvalidParameter(format!(
                    "`{name}` is given more than once"
                )));
            }
            // An empty filter would either match nothing or, dropped, everything: neither is
            // what was meant. Only a repeatable parameter is a comma-separated list.
            let empty = if repeatable.contains(&name.as_str()) {
                value.split(',').all(|piece| piece.trim().is_empty())
            } else {
                value.is_empty()
            };
            if empty {
                return Err(ApiError::InvalidParameter(format!(
                    "`{name}` is given without a value"
                )));
            }
        }
        Ok(Self { pairs })
    }

    /// The value of a parameter given once, if given.
    pub fn one(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeatable parameter: `event=a&event=b` or `event=a,b`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    }

    /// `limit`: 1 to `max`, `default` when absent.
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        let Some(text) = self.one("limit") else {
            return Ok(default);
        };
        text.parse::<usize>()
            .ok()
            .filter(|limit| (1..=max).contains(limit))
            .ok_or_else(|| {
                ApiError::InvalidParameter(format!(
                    "`limit` must be a whole number from 1 to {max}"
                ))
            })
    }
}

/// A caller-chosen name, short enough to repeat in an answer.
fn shown(name: &str) -> String {
    if name.chars().count() <= 64 {
        name.to_owned()
    } else {
        format!("{}…", name.chars().take(64).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_repeated_parameters_are_refused() {
        let known = ["event", "limit"];
        assert!(QueryParams::parse(Some("evnt=accepted"), &known, &["event"]).is_err());
        assert!(QueryParams::parse(Some("limit=1&limit=2"), &known, &["event"]).is_err());
        // A single value is taken whole: commas are just characters of it.
        assert!(QueryParams::parse(Some("subject=%2C"), &["subject"], &[]).is_ok());
        for empty in ["event=", "event=,", "event=accepted&event=", "limit="] {
            assert!(
                QueryParams::parse(Some(empty), &known, &["event"]).is_err(),
                "{empty} would filter on nothing"
            );
        }
        let params = QueryParams::parse(
            Some("event=accepted&event=started,denied"),
            &known,
            &["event"],
        );
        assert_eq!(
            params.map(|p| p.all("event").join(" ")).ok().as_deref(),
            Some("accepted started denied")
        );
    }
}
