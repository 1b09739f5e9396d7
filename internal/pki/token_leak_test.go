package pki

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// A token pasted with its parts in the wrong order puts the secret where
// the id goes: the error must not echo it (found by FuzzParseToken, whose
// crasher is kept in testdata/fuzz).
func TestParseTokenErrorNeverEchoesTheID(t *testing.T) {
	const secret = "0123456789abcdef"
	_, _, _, err := ParseToken(secret + ".abcdef." + testPinHex)
	require.Error(t, err)
	require.NotContains(t, err.Error(), secret)
	require.Contains(t, err.Error(), "join token id must be 6 characters [a-z0-9], got 16 byte(s)")
}
