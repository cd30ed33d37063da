//! The contract between Rust and each Lua script: its `KEYS` and `ARGV` by name.
//!
//! A script's keys and arguments are declared once, as Rust structs with named fields
//! ([`lua_keys!`], [`lua_args!`]); [`lua_script!`] ties a script file to them. The Lua
//! source Redis runs is a generated header that binds each name to its position, followed by
//! the file as written — so the file uses the names (`queue`, `entry_id`), never `KEYS[1]`,
//! and a position can never disagree between the two sides. The header is one line: Redis'
//! error lines (`user_script:N`) are the file's line N + 1. A unit test checks every file
//! against its declaration (see [`Contract::problems`]); Redis itself refuses a script that
//! reads a name declared nowhere (an undeclared global).

/// One script's declared names, for generating its header and for the contract test.
#[derive(Debug, Clone, Copy)]
pub struct Contract {
    pub file: &'static str,
    pub body: &'static str,
    pub keys: &'static [&'static str],
    pub args: &'static [&'static str],
    /// The name of a list of every argument after `args` (variadic scripts).
    pub rest: Option<&'static str>,
}

impl Contract {
    /// The source Redis runs: the one-line header, then the file.
    pub fn source(&self) -> String {
        let mut header = String::new();
        for (position, name) in self.keys.iter().enumerate() {
            header.push_str(&format!("local {name} = KEYS[{}]; ", position + 1));
        }
        for (position, name) in self.args.iter().enumerate() {
            header.push_str(&format!("local {name} = ARGV[{}]; ", position + 1));
        }
        if let Some(rest) = self.rest {
            header.push_str(&format!(
                "local {rest} = {{}}; for i = {}, #ARGV do {rest}[#{rest} + 1] = ARGV[i] end; ",
                self.args.len() + 1
            ));
        }
        format!("{header}\n{}", self.body)
    }

    /// What is wrong with the file against its declaration: positional access, a declared
    /// name the file never uses, a name declared twice or shadowed by a `local` of the file.
    pub fn problems(&self) -> Vec<String> {
        let code = code_only(self.body);
        let words: Vec<&str> = code
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .collect();
        let mut problems = Vec::new();
        for positional in ["KEYS", "ARGV"] {
            if words.contains(&positional) {
                problems.push(format!("{}: uses {positional} by position", self.file));
            }
        }
        let declared: Vec<&str> = self
            .keys
            .iter()
            .chain(self.args)
            .chain(self.rest.as_slice())
            .copied()
            .collect();
        for (i, name) in declared.iter().enumerate() {
            if RESERVED.contains(name) {
                problems.push(format!(
                    "{}: `{name}` is a Lua keyword or global of Redis' Lua",
                    self.file
                ));
            }
            if declared[..i].contains(name) {
                problems.push(format!("{}: `{name}` declared twice", self.file));
            }
            if !words.contains(name) {
                problems.push(format!("{}: `{name}` declared but never used", self.file));
            }
            if code.contains(&format!("local {name} ")) || code.contains(&format!("local {name},"))
            {
                problems.push(format!("{}: `{name}` shadowed by a local", self.file));
            }
        }
        problems
    }
}

/// Names a declared key or argument must not take: Lua's keywords, and the globals Redis'
/// Lua offers (a local of that name would hide the library the script needs).
const RESERVED: &[&str] = &[
    "and",
    "break",
    "do",
    "else",
    "elseif",
    "end",
    "false",
    "for",
    "function",
    "if",
    "in",
    "local",
    "nil",
    "not",
    "or",
    "repeat",
    "return",
    "then",
    "true",
    "until",
    "while",
    "redis",
    "cjson",
    "cmsgpack",
    "bit",
    "struct",
    "table",
    "string",
    "math",
    "os",
    "tostring",
    "tonumber",
    "type",
    "unpack",
    "pairs",
    "ipairs",
    "next",
    "select",
    "error",
    "pcall",
    "assert",
    "setmetatable",
    "getmetatable",
    "rawget",
    "rawset",
    "_G",
    "KEYS",
    "ARGV",
];

/// The file without comments and string literals (names inside them do not count).
fn code_only(body: &str) -> String {
    let mut code = String::with_capacity(body.len());
    for line in body.lines() {
        let mut quote: Option<char> = None;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match quote {
                Some(_) if c == '\\' => {
                    chars.next();
                }
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '\'' || c == '"' => {
                    quote = Some(c);
                    code.push(' ');
                }
                None if c == '-' && chars.peek() == Some(&'-') => break,
                None => code.push(c),
            }
        }
        code.push('\n');
    }
    code
}

/// Declares a script's keys: a struct of `String` fields, in `KEYS` order.
macro_rules! lua_keys {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($key:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        $vis struct $name {
            $(pub $key: String,)+
        }

        impl $name {
            pub const NAMES: &'static [&'static str] = &[$(stringify!($key)),+];

            fn push(self, invocation: &mut redis::ScriptInvocation<'_>) {
                $(invocation.key(self.$key);)+
            }
        }
    };
}

/// Declares a script's arguments: a struct of fields in `ARGV` order, optionally ending in
/// `..name: type` for a list of every further argument (each fixed one then ends in `,`).
macro_rules! lua_args {
    ($(#[$meta:meta])* $vis:vis struct $name:ident $(<$lt:lifetime>)? {
        $($arg:ident : $ty:ty,)* .. $rest:ident : $rest_ty:ty $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        $vis struct $name $(<$lt>)? {
            $(pub $arg: $ty,)*
            pub $rest: $rest_ty,
        }

        impl $(<$lt>)? $name $(<$lt>)? {
            pub const NAMES: &'static [&'static str] = &[$(stringify!($arg)),*];
            pub const REST: Option<&'static str> = Some(stringify!($rest));

            fn push(&self, invocation: &mut redis::ScriptInvocation<'_>) {
                $(invocation.arg(&self.$arg);)*
                invocation.arg(&self.$rest);
            }
        }
    };
    ($(#[$meta:meta])* $vis:vis struct $name:ident $(<$lt:lifetime>)? {
        $($arg:ident : $ty:ty),* $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        $vis struct $name $(<$lt>)? {
            $(pub $arg: $ty,)*
        }

        impl $(<$lt>)? $name $(<$lt>)? {
            pub const NAMES: &'static [&'static str] = &[$(stringify!($arg)),*];
            pub const REST: Option<&'static str> = None;

            fn push(&self, invocation: &mut redis::ScriptInvocation<'_>) {
                $(invocation.arg(&self.$arg);)*
            }
        }
    };
}

/// Ties a script file to its keys and arguments: `Name::invocation(keys, args)` prepares a
/// call, `Name::CONTRACT` describes it.
macro_rules! lua_script {
    ($(#[$meta:meta])* $vis:vis struct $name:ident = $file:literal, $keys:ident, $args:ident;) => {
        $(#[$meta])*
        $vis struct $name;

        impl $name {
            pub const CONTRACT: $crate::lua::Contract = $crate::lua::Contract {
                file: $file,
                body: include_str!($file),
                keys: $keys::NAMES,
                args: $args::NAMES,
                rest: $args::REST,
            };

            /// A call of the script with these keys and arguments, ready to invoke.
            pub fn invocation(keys: $keys, args: &$args) -> redis::ScriptInvocation<'static> {
                static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
                let script =
                    SCRIPT.get_or_init(|| redis::Script::new(&Self::CONTRACT.source()));
                let mut invocation = script.prepare_invoke();
                keys.push(&mut invocation);
                args.push(&mut invocation);
                invocation
            }
        }
    };
}

pub(crate) use {lua_args, lua_keys, lua_script};

/// Fails (a test) with every problem of every contract in `contracts`.
#[cfg(test)]
pub fn assert_contracts_hold(contracts: &[Contract]) {
    let problems: Vec<String> = contracts.iter().flat_map(Contract::problems).collect();
    assert!(problems.is_empty(), "{problems:#?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: Contract = Contract {
        file: "sample.lua",
        body: "-- uses KEYS[1] in a comment only\nredis.call('SET', queue, 'ARGV')\nreturn ids[1] .. entry",
        keys: &["queue"],
        args: &["entry"],
        rest: Some("ids"),
    };

    #[test]
    fn the_header_binds_each_name_to_its_position_on_one_line() {
        let source = SAMPLE.source();
        let (header, body) = source.split_once('\n').unwrap_or_default();
        assert_eq!(
            header,
            "local queue = KEYS[1]; local entry = ARGV[1]; \
             local ids = {}; for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end; "
        );
        assert_eq!(body, SAMPLE.body);
        assert!(SAMPLE.problems().is_empty(), "{:?}", SAMPLE.problems());
    }

    #[test]
    fn a_name_that_would_hide_a_lua_library_is_a_problem() {
        let hiding = Contract {
            body: "return table .. entry .. ids[1]",
            keys: &["table"],
            ..SAMPLE
        };
        let problems = hiding.problems();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("`table` is a Lua keyword or global")),
            "{problems:?}"
        );
    }

    #[test]
    fn positional_access_unused_and_shadowed_names_are_problems() {
        let bad = Contract {
            body: "local entry = KEYS[1]\nreturn ARGV[2]",
            ..SAMPLE
        };
        let problems = bad.problems();
        for expected in [
            "uses KEYS by position",
            "uses ARGV by position",
            "`queue` declared but never used",
            "`ids` declared but never used",
            "`entry` shadowed by a local",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{expected}: {problems:?}"
            );
        }
    }
}
