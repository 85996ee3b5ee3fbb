package stream

import "testing"

type msg uint64

func (m msg) GetSequence() uint64 { return uint64(m) }

func seqs(ms []msg) []uint64 {
	var out []uint64
	for _, m := range ms {
		out = append(out, uint64(m))
	}
	return out
}

func TestBroker(t *testing.T) {
	t.Parallel()
	b := NewBroker[msg](10, 4)
	got, covered, last, wait := b.Since(10)
	if len(got) != 0 || !covered || last != 10 {
		t.Fatalf("empty broker: %v %v %d", got, covered, last)
	}
	// After 5 with nothing retained: the store must be read.
	if _, covered, _, _ := b.Since(5); covered {
		t.Error("an empty ring claims to cover sequences before its start")
	}
	b.Publish([]msg{9, 11, 12}) // 9 is old: ignored
	select {
	case <-wait:
	default:
		t.Error("publish did not wake waiters")
	}
	if got, covered, last, _ := b.Since(10); !covered || last != 12 || len(got) != 2 || got[0] != 11 {
		t.Errorf("since 10: %v %v %d", seqs(got), covered, last)
	}
	b.Publish([]msg{13, 14, 15, 16}) // the ring keeps 13..16
	if _, covered, _, _ := b.Since(11); covered {
		t.Error("the ring lost 12 but claims to cover after 11")
	}
	if got, covered, _, _ := b.Since(12); !covered || len(got) != 4 || got[0] != 13 || got[3] != 16 {
		t.Errorf("since 12: %v %v", seqs(got), covered)
	}
	if got, _, _, _ := b.Since(15); len(got) != 1 || got[0] != 16 {
		t.Errorf("since 15: %v", seqs(got))
	}
	if b.Last() != 16 {
		t.Errorf("last %d", b.Last())
	}
}
