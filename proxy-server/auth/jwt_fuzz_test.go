package auth

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzExpiry: the exp claim is read from an agent's token before anything
// vouches for it. Any token: no panic, and an expiry only within (0, 2^40]
// seconds; a token well formed by wellFormed is printable ASCII within the
// bound. A JWT whose payload says exp N (a NumericDate, with or without a
// fraction) expires at N.
func FuzzExpiry(f *testing.F) {
	for _, s := range []string{
		jwt(`{"exp":1700000000}`), jwt(`{"exp":1700000000.5,"aud":["x"]}`), jwt(`{"exp":"1"}`), jwt(`{"exp":-1}`),
		jwt(`{"exp":1e400}`), jwt(`{}`), jwt(`[]`), "a.b", "a.b.c.d", "a.%%%.c", "", jwt(`{"exp":1}`) + "=",
	} {
		f.Add(s, int64(1700000000))
	}
	f.Add(jwt(`{"exp":0.5}`), int64(0))
	f.Add("", int64(1<<40))
	f.Fuzz(func(t *testing.T, token string, exp int64) {
		if at, ok := expiry(token); ok && (at.Unix() <= 0 || at.Unix() > 1<<40) {
			t.Fatalf("%q: expiry %v accepted", token, at)
		}
		if wellFormed(token) {
			if len(token) > maxTokenBytes || strings.ContainsFunc(token, func(r rune) bool { return r <= ' ' || r > '~' }) {
				t.Fatalf("%q: well formed", token)
			}
		}
		for _, frac := range []string{"", ".25"} {
			claim := strconv.FormatInt(exp, 10) + frac
			at, ok := expiry(jwt(`{"exp":` + claim + `,"sub":"x"}`))
			want := exp > 0 && (exp < 1<<40 || exp == 1<<40 && frac == "")
			if ok != want || ok && !at.Equal(time.Unix(exp, 0)) {
				t.Fatalf("exp %s: %v, %v", claim, at, ok)
			}
		}
	})
}
