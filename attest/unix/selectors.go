package unix

import (
	"fmt"
	"path"
	"strconv"
	"strings"

	"github.com/meshca/meshca/attest"
)

// SelectorKeys are the keys of the selectors the unix attestor produces,
// in the order it produces them: unix:uid:<n>, unix:gid:<n>,
// unix:user:<name>, unix:group:<name>, unix:path:<executable>,
// unix:sha256:<hex of the executable>.
var SelectorKeys = []string{"uid", "gid", "user", "group", "path", "sha256"}

// ValidateSelectorValue checks the value of a unix selector ("uid:1000",
// "path:/usr/bin/app", ...) as the attestor would produce it, so that a
// registration entry cannot hold a selector that never matches:
//
//   - uid, gid: a decimal ID from 0 to 4294967294, without sign, spaces or
//     leading zeros (as /proc shows it);
//   - user, group: a name, not all digits (that is unix:uid or unix:gid),
//     without ':' or leading or trailing spaces;
//   - path: an absolute, clean path (no "..", ".", "//" or trailing '/'),
//     not "/";
//   - sha256: 64 lowercase hexadecimal digits.
//
// Errors match attest.ErrInvalidSelector and say what is wrong.
func ValidateSelectorValue(value string) error {
	if err := attest.ValidateSelectorValue(value); err != nil {
		return err
	}
	key, v, ok := strings.Cut(value, ":")
	if !ok {
		return selectorError(value, fmt.Sprintf("want unix:<key>:<value> with a key of %s", strings.Join(SelectorKeys, ", ")))
	}
	if v == "" {
		return selectorError(value, "the value after "+key+": is empty")
	}
	if strings.TrimSpace(v) != v {
		return selectorError(value, "the value has leading or trailing spaces")
	}
	switch key {
	case "uid", "gid":
		return checkID(value, key, v)
	case "user", "group":
		if strings.Contains(v, ":") {
			return selectorError(value, "a "+key+" name has no ':'")
		}
		if _, err := strconv.ParseUint(v, 10, 64); err == nil {
			return selectorError(value, fmt.Sprintf("%q is a number: for a numeric ID use unix:%cid:%s", v, key[0], v))
		}
		return nil
	case "path":
		switch {
		case !strings.HasPrefix(v, "/"):
			return selectorError(value, "the path must be absolute (start with /): the attestor sees the executable's absolute path")
		case v == "/":
			return selectorError(value, "/ is a directory, not an executable")
		case path.Clean(v) != v:
			return selectorError(value, fmt.Sprintf("the path is not clean (want %s): the attestor sees the executable's resolved path", path.Clean(v)))
		}
		return nil
	case "sha256":
		if len(v) != 64 {
			return selectorError(value, fmt.Sprintf("want 64 hexadecimal digits (a SHA-256), got %d characters", len(v)))
		}
		for i := 0; i < len(v); i++ {
			switch c := v[i]; {
			case c >= '0' && c <= '9', c >= 'a' && c <= 'f':
			case c >= 'A' && c <= 'F':
				return selectorError(value, "use lowercase hexadecimal digits, as sha256sum prints them")
			default:
				return selectorError(value, fmt.Sprintf("%q is not a hexadecimal digit", c))
			}
		}
		return nil
	}
	return selectorError(value, fmt.Sprintf("unknown key %q: want one of %s", key, strings.Join(SelectorKeys, ", ")))
}

// checkID checks a uid or gid as /proc shows it.
func checkID(value, key, v string) error {
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return selectorError(value, fmt.Sprintf("a %s is a non-negative decimal number, e.g. %s:1000", key, key))
		}
	}
	if len(v) > 1 && v[0] == '0' {
		return selectorError(value, fmt.Sprintf("write the %s without leading zeros, as the attestor does", key))
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil || n == 1<<32-1 {
		return selectorError(value, fmt.Sprintf("a %s is at most 4294967294", key))
	}
	return nil
}

func selectorError(value, msg string) error {
	return attest.NewError(attest.KindInvalidSelector, Name, Name+":"+value+": "+msg, nil)
}
