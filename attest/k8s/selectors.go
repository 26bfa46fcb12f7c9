package k8s

import (
	"fmt"
	"strings"

	"github.com/meshca/meshca/attest"
)

// SelectorKeys are the keys of the selectors the k8s attestor produces:
// k8s:ns:<namespace>, k8s:sa:<service account>, k8s:pod-name:<name>,
// k8s:pod-uid:<uid>, k8s:pod-label:<key>:<value>,
// k8s:container-name:<name>, k8s:node-name:<name>.
var SelectorKeys = []string{"ns", "sa", "pod-name", "pod-uid", "pod-label", "container-name", "node-name"}

// ValidateSelectorValue checks the value of a k8s selector ("ns:prod",
// "pod-label:app:web", ...) against the rules the Kubernetes API server
// applies to what the attestor reads, so that a registration entry cannot
// hold a selector that never matches:
//
//   - ns, container-name: a DNS-1123 label (at most 63 characters of a-z,
//     0-9 and '-', starting and ending with a letter or digit);
//   - sa, pod-name, node-name: a DNS-1123 subdomain (dot-separated labels,
//     at most 253 characters);
//   - pod-uid: lowercase hexadecimal digits and '-' (a UUID, or the hash
//     the kubelet gives a static pod), at most 64 characters;
//   - pod-label: <key>:<value>, the key a label key ([prefix/]name, name at
//     most 63 characters of letters, digits, '-', '_' and '.', starting and
//     ending with a letter or digit; prefix a DNS-1123 subdomain) and the
//     value empty or of the same form as the name.
//
// Errors match attest.ErrInvalidSelector and say what is wrong.
func ValidateSelectorValue(value string) error {
	if err := attest.ValidateSelectorValue(value); err != nil {
		return err
	}
	key, v, ok := strings.Cut(value, ":")
	if !ok {
		return selectorError(value, fmt.Sprintf("want k8s:<key>:<value> with a key of %s", strings.Join(SelectorKeys, ", ")))
	}
	if v == "" && key != "pod-label" {
		return selectorError(value, "the value after "+key+": is empty")
	}
	if strings.TrimSpace(v) != v {
		return selectorError(value, "the value has leading or trailing spaces")
	}
	var why string
	switch key {
	case "ns":
		why = dns1123Label("a namespace", v)
	case "container-name":
		why = dns1123Label("a container name", v)
	case "sa":
		why = dns1123Subdomain("a service account name", v)
	case "pod-name":
		why = dns1123Subdomain("a pod name", v)
	case "node-name":
		why = dns1123Subdomain("a node name", v)
	case "pod-uid":
		why = podUID(v)
	case "pod-label":
		lk, lv, ok := strings.Cut(v, ":")
		switch {
		case !ok:
			why = "want k8s:pod-label:<label key>:<label value>"
		case lk == "":
			why = "the label key is empty"
		default:
			if why = labelKey(lk); why == "" && lv != "" {
				if w := labelName(lv); w != "" {
					why = "label value " + w
				}
			}
		}
	default:
		return selectorError(value, fmt.Sprintf("unknown key %q: want one of %s", key, strings.Join(SelectorKeys, ", ")))
	}
	if why != "" {
		return selectorError(value, why)
	}
	return nil
}

func selectorError(value, msg string) error {
	return attest.NewError(attest.KindInvalidSelector, Name, Name+":"+value+": "+msg, nil)
}

func isLowerAlnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }

func isAlnum(c byte) bool { return isLowerAlnum(c) || c >= 'A' && c <= 'Z' }

// dns1123Label returns why s is no DNS-1123 label, or "".
func dns1123Label(what, s string) string {
	switch {
	case len(s) > 63:
		return fmt.Sprintf("%s is at most 63 characters, not %d", what, len(s))
	case s == "":
		return what + " is empty"
	case !isLowerAlnum(s[0]) || !isLowerAlnum(s[len(s)-1]):
		return what + " starts and ends with a lowercase letter or a digit"
	}
	for i := 0; i < len(s); i++ {
		if !isLowerAlnum(s[i]) && s[i] != '-' {
			return fmt.Sprintf("%s has only lowercase letters, digits and '-', not %q", what, s[i])
		}
	}
	return ""
}

// dns1123Subdomain returns why s is no DNS-1123 subdomain, or "".
func dns1123Subdomain(what, s string) string {
	if len(s) > 253 {
		return fmt.Sprintf("%s is at most 253 characters, not %d", what, len(s))
	}
	for _, label := range strings.Split(s, ".") {
		if why := dns1123Label(what+" (each dot-separated part)", label); why != "" {
			return why
		}
	}
	return ""
}

// podUID returns why s is not a pod UID as the kubelet reports it, or "".
func podUID(s string) string {
	if len(s) > 64 {
		return fmt.Sprintf("a pod UID is at most 64 characters, not %d", len(s))
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c == '-') {
			return fmt.Sprintf("a pod UID has only lowercase hexadecimal digits and '-' (e.g. a UUID), not %q", c)
		}
	}
	return ""
}

// labelKey returns why s is no label key ([prefix/]name), or "".
func labelKey(s string) string {
	prefix, name, hasPrefix := strings.Cut(s, "/")
	if !hasPrefix {
		name = s
	} else if why := dns1123Subdomain("a label key prefix", prefix); why != "" {
		return why
	}
	if why := labelName(name); why != "" {
		return "label key " + why
	}
	return ""
}

// labelName returns why s is no label name or non-empty label value, or "".
func labelName(s string) string {
	switch {
	case len(s) > 63:
		return fmt.Sprintf("is at most 63 characters, not %d", len(s))
	case s == "":
		return "is empty"
	case !isAlnum(s[0]) || !isAlnum(s[len(s)-1]):
		return fmt.Sprintf("%q starts and ends with a letter or a digit", s)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '-' && c != '_' && c != '.' {
			return fmt.Sprintf("%q has only letters, digits, '-', '_' and '.', not %q", s, c)
		}
	}
	return ""
}
