package pki

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const testPinHex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func FuzzParseToken(f *testing.F) {
	for _, s := range []string{
		"",
		".",
		"..",
		"...",
		"abcdef.0123456789abcdef." + testPinHex,
		"abcdef.0123456789abcdef.sha256:" + testPinHex,
		"  abcdef.0123456789abcdef." + testPinHex + "\n",
		"abcdef.0123456789abcdef.sha256:sha256:" + testPinHex,
		"abcdef.0123456789abcdef." + strings.ToUpper(testPinHex),
		"ABCDEF.0123456789abcdef." + testPinHex,
		"abcdef.0123456789abcdef",
		"abcdef.0123456789abcde\u00e9." + testPinHex,
		"abcdef.0123456789abcdef." + testPinHex + ".extra",
		"\xff\xfe.\x00." + testPinHex,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		// SplitIDSecret never panics; what it accepts is exactly id.secret.
		if id, secret, err := SplitIDSecret(s); err == nil {
			require.Equal(t, s, id+"."+secret)
			require.Regexp(t, `^[a-z0-9]{6}$`, id)
			require.Regexp(t, `^[a-z0-9]{16}$`, secret)
		}

		id, secret, pin, err := ParseToken(s)
		if err != nil {
			require.Empty(t, id)
			require.Empty(t, secret)
			require.Empty(t, pin)
			// Error messages never echo the secret part back.
			parts := strings.Split(strings.TrimSpace(s), ".")
			if len(parts) == 3 && len(parts[1]) >= 8 && !strings.Contains(parts[0], parts[1]) {
				require.NotContains(t, err.Error(), parts[1], "error leaks the token secret")
			}
			return
		}
		require.Regexp(t, `^[a-z0-9]{6}$`, id)
		require.Regexp(t, `^[a-z0-9]{16}$`, secret)
		require.Regexp(t, `^sha256:[0-9a-f]{64}$`, pin)

		// FormatToken gives back the token in its canonical form: no
		// surrounding space, no "sha256:" before the pin.
		tok := FormatToken(id, secret, pin)
		canonical := strings.Replace(strings.TrimSpace(s), ".sha256:", ".", 1)
		require.Equal(t, canonical, tok)
		if canonical == s {
			require.Equal(t, s, tok, "a canonical token re-formats to itself")
		}

		// And it parses again to the same parts.
		id2, secret2, pin2, err := ParseToken(tok)
		require.NoError(t, err)
		require.Equal(t, []string{id, secret, pin}, []string{id2, secret2, pin2})

		// The id.secret half is what the agent sends to enroll.
		sid, ssecret, err := SplitIDSecret(id + "." + secret)
		require.NoError(t, err)
		require.Equal(t, id, sid)
		require.Equal(t, secret, ssecret)
	})
}

func TestParseTokenCanonicalForms(t *testing.T) {
	canonical := "abcdef.0123456789abcdef." + testPinHex
	tests := []struct {
		name string
		in   string
	}{
		{"canonical", canonical},
		{"sha256 prefix", "abcdef.0123456789abcdef.sha256:" + testPinHex},
		{"surrounding whitespace", " \t" + canonical + "\r\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, secret, pin, err := ParseToken(tc.in)
			require.NoError(t, err)
			require.Equal(t, "abcdef", id)
			require.Equal(t, "0123456789abcdef", secret)
			require.Equal(t, "sha256:"+testPinHex, pin)
			require.Equal(t, canonical, FormatToken(id, secret, pin))
		})
	}
}
