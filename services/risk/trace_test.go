package risk

import (
	"context"
	"io"
	"log/slog"
	"testing"

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
)

// TestCommitSpan: a commit of the risk writer is one span with its row
// count, linked to the span of the request whose change it writes.
func TestCommitSpan(t *testing.T) {
	t.Parallel()
	db, tp, rec := storetest.TracedSQLite(t, Migrations())
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := NewSQLStore(ctx, db, log)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	eng, err := NewEngine(ctx, DefaultConfig(), st, log)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(eng, log, nil)
	if err != nil {
		t.Fatal(err)
	}

	rctx, req := tp.Tracer("test").Start(ctx, "UpdatePrices")
	if _, err := srv.UpdatePrices(rctx, &riskv1.UpdatePricesRequest{Prices: []*riskv1.PriceUpdate{
		{Symbol: "AAA", Price: 10}, {Symbol: "BBB", Price: 20},
	}}); err != nil {
		t.Fatal(err)
	}
	req.End()

	found := false
	for _, s := range rec.Ended() {
		if s.Name() != "write risk" {
			continue
		}
		for _, l := range s.Links() {
			if l.SpanContext.SpanID() != req.SpanContext().SpanID() {
				continue
			}
			found = true
			for _, kv := range s.Attributes() {
				if kv.Key == store.AttrBatchRows && kv.Value.AsInt64() != 2 {
					t.Errorf("commit span rows %d, want 2 (one price row per symbol)", kv.Value.AsInt64())
				}
			}
		}
	}
	if !found {
		t.Error("no write risk span links to the UpdatePrices request")
	}
}
