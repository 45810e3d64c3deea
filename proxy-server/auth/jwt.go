package auth

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"time"
)

// expiry reads the exp claim of a JWT without verifying anything. It is
// used for one thing only: never to cache a review past the moment the
// token stops being valid. kube-apiserver decides everything else.
func expiry(token string) (time.Time, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp *json.Number `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.Exp == nil {
		return time.Time{}, false
	}
	// exp is a NumericDate: seconds, possibly with a fraction (dropped:
	// under a second after the epoch is no expiry at all).
	f, err := claims.Exp.Float64()
	if err != nil || f < 1 || f > 1<<40 {
		return time.Time{}, false
	}
	return time.Unix(int64(f), 0), true
}

// wellFormed reports whether token could be a bearer token at all:
// printable ASCII without spaces, of a sane length. Anything else is
// refused without asking kube-apiserver.
func wellFormed(token string) bool {
	if len(token) > maxTokenBytes {
		return false
	}
	for i := 0; i < len(token); i++ {
		if c := token[i]; c <= ' ' || c > '~' {
			return false
		}
	}
	return true
}

// maxTokenBytes bounds a token; service-account tokens are about 1 KiB.
const maxTokenBytes = 16 << 10
