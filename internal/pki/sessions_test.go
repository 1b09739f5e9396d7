package pki

import (
	"crypto/tls"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSessionCacheOffersADeletedTicketOnceMore(t *testing.T) {
	c := NewSessionCache(4)
	s1 := &tls.ClientSessionState{}
	c.Put("srv", s1)
	got, ok := c.Get("srv")
	require.True(t, ok)
	require.Same(t, s1, got)

	// A failed resumption deletes it: it is offered once more, then gone.
	c.Put("srv", nil)
	got, ok = c.Get("srv")
	require.True(t, ok)
	require.Same(t, s1, got)
	c.Put("srv", nil) // failed again
	got, _ = c.Get("srv")
	require.Nil(t, got, "a ticket that failed twice must not be offered again")

	// A new ticket replaces a spare.
	c.Put("srv", s1)
	c.Put("srv", nil)
	s2 := &tls.ClientSessionState{}
	c.Put("srv", s2)
	got, ok = c.Get("srv")
	require.True(t, ok)
	require.Same(t, s2, got)
	c.Put("srv", nil)
	got, _ = c.Get("srv")
	require.Same(t, s2, got, "the spare is the ticket that failed, not an older one")
	got, _ = c.Get("srv")
	require.Nil(t, got)
}
