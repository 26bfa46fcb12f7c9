package server

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// JoinTokenLen is the length of a join token: 32 random bytes in unpadded
// base64url (RFC 4648 section 5), as CreateJoinToken makes them.
const JoinTokenLen = 43

// ErrMalformedJoinToken is matched (errors.Is) by every CheckJoinToken
// error.
var ErrMalformedJoinToken = errors.New("malformed join token")

// CheckJoinToken checks that token has the form of a meshca join token,
// 43 characters of base64url encoding 32 bytes, without looking it up, so
// that a truncated or mistyped token gets an error saying so before any
// server is asked (a well-formed token that is unknown, used, expired or
// of the other kind is refused by the server, which says no more than
// that). Errors wrap ErrMalformedJoinToken and never contain the token.
func CheckJoinToken(token string) error {
	if strings.TrimSpace(token) != token {
		return fmt.Errorf("%w: it has leading or trailing spaces or a newline", ErrMalformedJoinToken)
	}
	if len(token) != JoinTokenLen {
		return fmt.Errorf("%w: a meshca join token is %d characters of base64url (A-Z, a-z, 0-9, '-', '_'); this one is %d", ErrMalformedJoinToken, JoinTokenLen, len(token))
	}
	for i := 0; i < len(token); i++ {
		c := token[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("%w: character %d is not base64url (A-Z, a-z, 0-9, '-', '_')", ErrMalformedJoinToken, i+1)
		}
	}
	if b, err := base64.RawURLEncoding.Strict().DecodeString(token); err != nil || len(b) != 32 {
		return fmt.Errorf("%w: it does not encode the 32 bytes of a meshca join token (the last character is wrong)", ErrMalformedJoinToken)
	}
	return nil
}
