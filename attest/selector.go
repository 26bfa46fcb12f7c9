package attest

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Selector limits.
const (
	// MaxSelectorTypeLen bounds a selector's type.
	MaxSelectorTypeLen = 64
	// MaxSelectorValueLen bounds a selector's value: room for a full Linux
	// path (PATH_MAX is 4096) in "unix:path:<path>".
	MaxSelectorValueLen = 8 << 10
)

// Selector is a type:value pair describing a node or a workload, e.g.
// {Type: "unix", Value: "uid:1000"}. The type is the attestation method;
// the value is usually itself "key:value".
type Selector struct {
	Type  string
	Value string
}

// String returns "type:value", e.g. "unix:uid:1000".
func (s Selector) String() string { return s.Type + ":" + s.Value }

// Validate checks that the type is 1 to MaxSelectorTypeLen characters of
// [a-z0-9_] and the value 1 to MaxSelectorValueLen bytes of UTF-8 without
// control characters (so that selectors print safely in logs and CLIs).
func (s Selector) Validate() error {
	switch {
	case s.Type == "":
		return selectorErr("empty type", nil)
	case len(s.Type) > MaxSelectorTypeLen:
		return selectorErr(fmt.Sprintf("type longer than %d bytes", MaxSelectorTypeLen), nil)
	}
	for i := 0; i < len(s.Type); i++ {
		if c := s.Type[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return selectorErr(fmt.Sprintf("type %q: use only a-z, 0-9 and '_'", s.Type), nil)
		}
	}
	return ValidateSelectorValue(s.Value)
}

// ValidateSelectorValue checks a selector value alone; see Selector.Validate.
func ValidateSelectorValue(v string) error {
	switch {
	case v == "":
		return selectorErr("empty value", nil)
	case len(v) > MaxSelectorValueLen:
		return selectorErr(fmt.Sprintf("value longer than %d bytes", MaxSelectorValueLen), nil)
	case !utf8.ValidString(v):
		return selectorErr("value is not valid UTF-8", nil)
	}
	if i := strings.IndexFunc(v, unicode.IsControl); i >= 0 {
		return selectorErr(fmt.Sprintf("value has a control character at byte %d", i), nil)
	}
	return nil
}

// ParseSelector parses "type:value", splitting at the first ':' (the value
// may contain more), and validates the result as Selector.Validate does.
// Errors match ErrInvalidSelector.
func ParseSelector(s string) (Selector, error) {
	if len(s) > MaxSelectorTypeLen+1+MaxSelectorValueLen {
		return Selector{}, selectorErr("selector too long", nil)
	}
	typ, value, ok := strings.Cut(s, ":")
	if !ok {
		return Selector{}, selectorErr("want type:value", nil)
	}
	sel := Selector{Type: typ, Value: value}
	if err := sel.Validate(); err != nil {
		return Selector{}, err
	}
	return sel, nil
}

func selectorErr(msg string, err error) error {
	return NewError(KindInvalidSelector, "", msg, err)
}
