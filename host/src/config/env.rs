//! `${NAME}` in a configuration's string values, replaced by the environment variable `NAME`
//! when the file is loaded, so that secrets stay out of the file.

/// The name of an environment variable a `${NAME}` refers to that is not set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UnsetVariable(pub(super) String);

/// Expands `${NAME}` in every string value of `table`, nested ones included.
pub(super) fn expand_strings(
    table: &mut toml::Table,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<(), UnsetVariable> {
    fn expand_value(
        value: &mut toml::Value,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), UnsetVariable> {
        match value {
            toml::Value::String(text) => *text = expand_variables(text, lookup)?,
            toml::Value::Array(items) => {
                for item in items {
                    expand_value(item, lookup)?;
                }
            }
            toml::Value::Table(table) => expand_strings(table, lookup)?,
            _ => {}
        }
        Ok(())
    }
    for (_, value) in table.iter_mut() {
        expand_value(value, lookup)?;
    }
    Ok(())
}

/// Replaces every `${NAME}` with `lookup(NAME)`; the first one missing is an error.
fn expand_variables(
    text: &str,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<String, UnsetVariable> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        out.push_str(&lookup(name).ok_or_else(|| UnsetVariable(name.to_owned()))?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_expanded_and_missing_ones_named() {
        let lookup = |name: &str| (name == "PASSWORD").then(|| "s3cret".to_owned());
        assert_eq!(
            expand_variables("redis://:${PASSWORD}@h", &lookup),
            Ok("redis://:s3cret@h".to_owned())
        );
        assert_eq!(
            expand_variables("${NOPE}", &lookup),
            Err(UnsetVariable("NOPE".to_owned()))
        );
        // Only values are expanded: comments may mention ${ANYTHING}.
        let mut table: toml::Table =
            toml::from_str("# uses ${NOPE}\n[store]\nurls = [\"redis://:${PASSWORD}@h\"]")
                .expect("parses");
        expand_strings(&mut table, &lookup).expect("expands");
        assert_eq!(
            table["store"]["urls"][0].as_str(),
            Some("redis://:s3cret@h")
        );
    }
}
