//! The XML of the answers: EC2's Query-protocol documents (namespace
//! `http://ec2.amazonaws.com/doc/2016-11-15/`, a `requestId` first) and its error document
//! (`Response/Errors/Error/Code+Message`, `RequestID`). A tiny writer: every element name is
//! a constant of this crate, every text is escaped.

use super::fault::Fault;

/// EC2's namespace for API version 2016-11-15 (P1).
pub const EC2_NS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";
/// STS's (GetCallerIdentity).
pub const STS_NS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";

/// An XML document being written.
pub struct Xml {
    out: String,
}

impl Xml {
    /// `<{action}Response xmlns=EC2><requestId>..</requestId>` ...
    pub fn ec2(action: &str, request_id: &str) -> Xml {
        let mut x = Xml {
            out: String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"),
        };
        x.out
            .push_str(&format!("<{action}Response xmlns=\"{EC2_NS}\">"));
        x.leaf("requestId", request_id);
        x
    }

    /// A bare document whose root the caller opens (STS's shape).
    pub fn bare() -> Xml {
        Xml {
            out: String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"),
        }
    }

    pub fn open(&mut self, tag: &str) -> &mut Xml {
        self.out.push('<');
        self.out.push_str(tag);
        self.out.push('>');
        self
    }

    pub fn open_ns(&mut self, tag: &str, ns: &str) -> &mut Xml {
        self.out.push_str(&format!("<{tag} xmlns=\"{ns}\">"));
        self
    }

    pub fn close(&mut self, tag: &str) -> &mut Xml {
        self.out.push_str("</");
        self.out.push_str(tag);
        self.out.push('>');
        self
    }

    pub fn leaf(&mut self, tag: &str, text: impl std::fmt::Display) -> &mut Xml {
        self.open(tag);
        escape_into(&mut self.out, &text.to_string());
        self.close(tag)
    }

    pub fn leaf_opt(&mut self, tag: &str, text: Option<impl std::fmt::Display>) -> &mut Xml {
        if let Some(t) = text {
            self.leaf(tag, t);
        }
        self
    }

    /// `<tag><item>..</item>...</tag>`, each item written by `f`.
    pub fn list<T>(&mut self, tag: &str, items: &[T], mut f: impl FnMut(&mut Xml, &T)) {
        self.open(tag);
        for item in items {
            self.open("item");
            f(self, item);
            self.close("item");
        }
        self.close(tag);
    }

    /// Closes the EC2 root and returns the text.
    pub fn finish(mut self, action: &str) -> String {
        self.close(&format!("{action}Response"));
        self.out
    }

    pub fn into_string(self) -> String {
        self.out
    }
}

/// EC2's error document.
pub fn error(fault: &Fault, request_id: &str) -> String {
    let mut x = Xml::bare();
    x.open("Response").open("Errors").open("Error");
    x.leaf("Code", fault.code).leaf("Message", &fault.message);
    x.close("Error").close("Errors");
    x.leaf("RequestID", request_id).close("Response");
    x.into_string()
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_has_ec2s_shape_and_escapes_text() {
        let f = Fault::invalid("a <b> & 'c'");
        assert_eq!(
            error(&f, "r-1"),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>\
             <Code>InvalidParameterValue</Code><Message>a &lt;b&gt; &amp; &apos;c&apos;</Message>\
             </Error></Errors><RequestID>r-1</RequestID></Response>"
        );
    }

    #[test]
    fn an_answer_is_in_ec2s_namespace_with_a_request_id() {
        let mut x = Xml::ec2("DeleteSecurityGroup", "r-2");
        x.leaf("return", true);
        assert!(x.finish("DeleteSecurityGroup").ends_with(
            "<DeleteSecurityGroupResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
             <requestId>r-2</requestId><return>true</return></DeleteSecurityGroupResponse>"
        ));
    }
}
