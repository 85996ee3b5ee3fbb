package experiment_test

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
)

// newRun creates an experiment and a run in it.
func (h *harness) newRun(t *testing.T, name string) *experimentv1.Run {
	t.Helper()
	ctx := context.Background()
	e, err := h.client.CreateExperiment(ctx, &experimentv1.CreateExperimentRequest{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	r, err := h.client.CreateRun(ctx, &experimentv1.CreateRunRequest{ExperimentId: e.GetExperiment().GetExperimentId()})
	if err != nil {
		t.Fatal(err)
	}
	return r.GetRun()
}

func (h *harness) getRun(t *testing.T, id string) *experimentv1.Run {
	t.Helper()
	r, err := h.client.GetRun(context.Background(), &experimentv1.GetRunRequest{RunId: id})
	if err != nil {
		t.Fatal(err)
	}
	return r.GetRun()
}

// history reads a whole metric series page by page.
func (h *harness) history(t *testing.T, runID, key string, pageSize int32) []*experimentv1.Metric {
	t.Helper()
	var out []*experimentv1.Metric
	token := ""
	for {
		resp, err := h.client.GetMetricHistory(context.Background(), &experimentv1.GetMetricHistoryRequest{
			RunId: runID, MetricKey: key, PageSize: pageSize, PageToken: token,
		})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, resp.GetMetrics()...)
		if token = resp.GetNextPageToken(); token == "" {
			if int(resp.GetTotalPoints()) != len(out) {
				t.Errorf("total_points %d, read %d", resp.GetTotalPoints(), len(out))
			}
			return out
		}
	}
}

func TestRunLifecycle(t *testing.T) {
	runServer(t, func(t *testing.T, h *harness) {
		ctx := context.Background()
		e, err := h.client.CreateExperiment(ctx, &experimentv1.CreateExperimentRequest{Name: "runs", ArtifactLocation: "s3://bucket/runs"})
		if err != nil {
			t.Fatal(err)
		}
		expID := e.GetExperiment().GetExperimentId()
		start := timestamppb.New(timestamppb.Now().AsTime().Add(-3600e9).Truncate(1e6))
		created, err := h.client.CreateRun(ctx, &experimentv1.CreateRunRequest{
			ExperimentId: expID, StartTime: start, Tags: map[string]string{"team": "quant"},
		})
		if err != nil {
			t.Fatal(err)
		}
		r := created.GetRun()
		if r.GetRunId() == "" || r.GetExperimentId() != expID || !strings.HasPrefix(r.GetRunName(), "run-") ||
			r.GetStatus() != experimentv1.RunStatus_RUN_STATUS_RUNNING || r.GetEndTime() != nil ||
			r.GetArtifactUri() != "s3://bucket/runs/"+r.GetRunId()+"/artifacts" || !r.GetStartTime().AsTime().Equal(start.AsTime()) ||
			r.GetTags()["team"] != "quant" || r.GetLifecycleStage() != experimentv1.LifecycleStage_LIFECYCLE_STAGE_ACTIVE {
			t.Fatalf("created %v", r)
		}
		if diff := cmp.Diff(r, h.getRun(t, r.GetRunId()), protocmp.Transform()); diff != "" {
			t.Errorf("get (-created +got):\n%s", diff)
		}

		upd, err := h.client.UpdateRun(ctx, &experimentv1.UpdateRunRequest{
			Run:        &experimentv1.Run{RunId: r.GetRunId(), Status: experimentv1.RunStatus_RUN_STATUS_FINISHED, RunName: "ignored"},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"status"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if u := upd.GetRun(); u.GetStatus() != experimentv1.RunStatus_RUN_STATUS_FINISHED || u.GetEndTime() == nil || u.GetRunName() != r.GetRunName() {
			t.Errorf("finishing sets end_time and nothing outside the mask: %v", u)
		}
		upd, err = h.client.UpdateRun(ctx, &experimentv1.UpdateRunRequest{
			Run:        &experimentv1.Run{RunId: r.GetRunId(), RunName: "renamed", EndTime: start},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"run_name", "end_time"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if u := upd.GetRun(); u.GetRunName() != "renamed" || !u.GetEndTime().AsTime().Equal(start.AsTime()) {
			t.Errorf("rename and end time: %v", u)
		}
		wantField(t, "end before start", "run.end_time", func() error {
			_, err := h.client.UpdateRun(ctx, &experimentv1.UpdateRunRequest{
				Run:        &experimentv1.Run{RunId: r.GetRunId(), EndTime: timestamppb.New(start.AsTime().Add(-1e9))},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"end_time"}},
			})
			return err
		})

		if _, err := h.client.SetRunTag(ctx, &experimentv1.SetRunTagRequest{RunId: r.GetRunId(), Key: "team", Value: "risk"}); err != nil {
			t.Fatal(err)
		}
		if _, err := h.client.SetRunTag(ctx, &experimentv1.SetRunTagRequest{RunId: r.GetRunId(), Key: "a/b c", Value: ""}); err != nil {
			t.Fatal(err)
		}
		if _, err := h.client.DeleteRunTag(ctx, &experimentv1.DeleteRunTagRequest{RunId: r.GetRunId(), Key: "a/b c"}); err != nil {
			t.Fatal(err)
		}
		wantCode(t, "delete a missing tag", codes.NotFound, func() error {
			_, err := h.client.DeleteRunTag(ctx, &experimentv1.DeleteRunTagRequest{RunId: r.GetRunId(), Key: "a/b c"})
			return err
		})
		if got := h.getRun(t, r.GetRunId()).GetTags(); !cmp.Equal(got, map[string]string{"team": "risk"}) {
			t.Errorf("tags = %v", got)
		}

		del, err := h.client.DeleteRun(ctx, &experimentv1.DeleteRunRequest{RunId: r.GetRunId()})
		if err != nil {
			t.Fatal(err)
		}
		if del.GetRun().GetLifecycleStage() != experimentv1.LifecycleStage_LIFECYCLE_STAGE_DELETED {
			t.Errorf("deleted: %v", del.GetRun())
		}
		for name, call := range map[string]func() error{
			"log to a deleted run": func() error {
				_, err := h.client.LogBatch(ctx, &experimentv1.LogBatchRequest{RunId: r.GetRunId(), Metrics: []*experimentv1.Metric{{Key: "m", Value: 1}}})
				return err
			},
			"tag a deleted run": func() error {
				_, err := h.client.SetRunTag(ctx, &experimentv1.SetRunTagRequest{RunId: r.GetRunId(), Key: "k", Value: "v"})
				return err
			},
			"update a deleted run": func() error {
				_, err := h.client.UpdateRun(ctx, &experimentv1.UpdateRunRequest{
					Run: &experimentv1.Run{RunId: r.GetRunId(), RunName: "x"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"run_name"}},
				})
				return err
			},
			"stream to a deleted run": func() error {
				s, err := h.client.StreamMetrics(ctx)
				if err != nil {
					return err
				}
				if err := s.Send(&experimentv1.StreamMetricsRequest{RunId: r.GetRunId(), Metrics: []*experimentv1.Metric{{Key: "m", Value: 1}}}); err != nil {
					return err
				}
				_, err = s.CloseAndRecv()
				return err
			},
			"delete twice": func() error {
				_, err := h.client.DeleteRun(ctx, &experimentv1.DeleteRunRequest{RunId: r.GetRunId()})
				return err
			},
		} {
			wantCode(t, name, codes.FailedPrecondition, call)
		}
		if _, err := h.client.RestoreRun(ctx, &experimentv1.RestoreRunRequest{RunId: r.GetRunId()}); err != nil {
			t.Fatal(err)
		}
		wantCode(t, "restore an active run", codes.FailedPrecondition, func() error {
			_, err := h.client.RestoreRun(ctx, &experimentv1.RestoreRunRequest{RunId: r.GetRunId()})
			return err
		})

		// Runs are created in active experiments only.
		if _, err := h.client.DeleteExperiment(ctx, &experimentv1.DeleteExperimentRequest{ExperimentId: expID}); err != nil {
			t.Fatal(err)
		}
		wantCode(t, "run in a deleted experiment", codes.FailedPrecondition, func() error {
			_, err := h.client.CreateRun(ctx, &experimentv1.CreateRunRequest{ExperimentId: expID})
			return err
		})
		wantCode(t, "run in an unknown experiment", codes.NotFound, func() error {
			_, err := h.client.CreateRun(ctx, &experimentv1.CreateRunRequest{ExperimentId: "0192f1f0-5b7e-7c3a-9d2e-1a2b3c4d5e6f"})
			return err
		})
	})
}

func TestLogBatch(t *testing.T) {
	runServer(t, func(t *testing.T, h *harness) {
		ctx := context.Background()
		r := h.newRun(t, "batch")
		id := r.GetRunId()
		_, err := h.client.LogBatch(ctx, &experimentv1.LogBatchRequest{
			RunId: id,
			Metrics: []*experimentv1.Metric{
				{Key: "loss", Value: 0.9, Step: 1, TimestampMs: 1000},
				{Key: "loss", Value: 0.5, Step: 3, TimestampMs: 900}, // the highest step wins
				{Key: "loss", Value: 0.7, Step: 2, TimestampMs: 5000},
				{Key: "train/acc", Value: 0.6, Step: 0, TimestampMs: 10},
				{Key: "train/acc", Value: 0.8, Step: 0, TimestampMs: 20}, // then the latest time
			},
			Params: []*experimentv1.Param{{Key: "lr", Value: "0.01"}, {Key: "layers", Value: "3"}},
			Tags:   []*experimentv1.Tag{{Key: "stage", Value: "a"}, {Key: "stage", Value: "b"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		got := h.getRun(t, id)
		wantLatest := []*experimentv1.Metric{
			{Key: "loss", Value: 0.5, Step: 3, TimestampMs: 900},
			{Key: "train/acc", Value: 0.8, Step: 0, TimestampMs: 20},
		}
		if diff := cmp.Diff(wantLatest, got.GetLatestMetrics(), protocmp.Transform()); diff != "" {
			t.Errorf("latest metrics (-want +got):\n%s", diff)
		}
		if !cmp.Equal(got.GetParams(), map[string]string{"lr": "0.01", "layers": "3"}) || got.GetTags()["stage"] != "b" {
			t.Errorf("params %v tags %v", got.GetParams(), got.GetTags())
		}

		// A later batch with a lower step does not move the latest value.
		if _, err := h.client.LogBatch(ctx, &experimentv1.LogBatchRequest{RunId: id, Metrics: []*experimentv1.Metric{{Key: "loss", Value: 9, Step: 2}}}); err != nil {
			t.Fatal(err)
		}
		if l := h.getRun(t, id).GetLatestMetrics()[0]; l.GetValue() != 0.5 {
			t.Errorf("latest loss moved back to %v", l)
		}

		// Params are immutable: the same value is a no-op, another fails
		// the whole batch.
		if _, err := h.client.LogBatch(ctx, &experimentv1.LogBatchRequest{RunId: id, Params: []*experimentv1.Param{{Key: "lr", Value: "0.01"}}}); err != nil {
			t.Errorf("same param again: %v", err)
		}
		wantCode(t, "changed param", codes.FailedPrecondition, func() error {
			_, err := h.client.LogBatch(ctx, &experimentv1.LogBatchRequest{
				RunId:   id,
				Metrics: []*experimentv1.Metric{{Key: "never", Value: 1}},
				Params:  []*experimentv1.Param{{Key: "new", Value: "x"}, {Key: "lr", Value: "0.1"}},
				Tags:    []*experimentv1.Tag{{Key: "stage", Value: "never"}},
			})
			return err
		})
		after := h.getRun(t, id)
		if _, ok := after.GetParams()["new"]; ok || after.GetTags()["stage"] != "b" || len(h.history(t, id, "never", 0)) != 0 {
			t.Errorf("a failed batch left writes behind: %v", after)
		}

		// An idempotency key makes a retry a no-op.
		req := &experimentv1.LogBatchRequest{RunId: id, IdempotencyKey: "k-1", Metrics: []*experimentv1.Metric{{Key: "retried", Value: 1}}}
		for i, want := range []bool{false, true, true} {
			resp, err := h.client.LogBatch(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetReplayed() != want {
				t.Errorf("call %d: replayed = %v, want %v", i, resp.GetReplayed(), want)
			}
		}
		if n := len(h.history(t, id, "retried", 0)); n != 1 {
			t.Errorf("retried batch stored %d points, want 1", n)
		}

		// MLflow's limits are accepted.
		full := &experimentv1.LogBatchRequest{RunId: id}
		for i := range 1000 {
			full.Metrics = append(full.Metrics, &experimentv1.Metric{Key: "full", Value: float64(i), Step: int64(i)})
		}
		for i := range 100 {
			full.Params = append(full.Params, &experimentv1.Param{Key: fmt.Sprintf("p%d", i), Value: "v"})
			full.Tags = append(full.Tags, &experimentv1.Tag{Key: fmt.Sprintf("t%d", i), Value: "v"})
		}
		if _, err := h.client.LogBatch(ctx, full); err != nil {
			t.Fatal(err)
		}
		if n := len(h.history(t, id, "full", 300)); n != 1000 {
			t.Errorf("full batch: %d points", n)
		}
	})
}

func TestStreamMetrics(t *testing.T) {
	runServer(t, func(t *testing.T, h *harness) {
		ctx := context.Background()
		a, b := h.newRun(t, "stream-a"), h.newRun(t, "stream-b")
		msg := func(run *experimentv1.Run, seq uint64, n int) *experimentv1.StreamMetricsRequest {
			m := &experimentv1.StreamMetricsRequest{RunId: run.GetRunId(), StreamId: "job-1", Sequence: seq}
			for i := range n {
				m.Metrics = append(m.Metrics, &experimentv1.Metric{Key: "loss", Value: float64(seq), Step: int64(seq)*100 + int64(i)})
			}
			return m
		}
		send := func(msgs ...*experimentv1.StreamMetricsRequest) (*experimentv1.StreamMetricsResponse, error) {
			s, err := h.client.StreamMetrics(ctx)
			if err != nil {
				return nil, err
			}
			for _, m := range msgs {
				if err := s.Send(m); err != nil {
					return nil, err
				}
			}
			return s.CloseAndRecv()
		}
		var msgs []*experimentv1.StreamMetricsRequest
		for seq := uint64(1); seq <= 30; seq++ {
			run := a
			if seq%3 == 0 {
				run = b
			}
			msgs = append(msgs, msg(run, seq, 50))
		}
		resp, err := send(msgs[:20]...)
		if err != nil {
			t.Fatal(err)
		}
		want := &experimentv1.StreamMetricsResponse{PointsReceived: 1000, PointsPersisted: 1000, MessagesReceived: 20, PersistedThroughSequence: 20}
		if diff := cmp.Diff(want, resp, protocmp.Transform()); diff != "" {
			t.Errorf("first stream (-want +got):\n%s", diff)
		}
		// The client resends its whole buffer on a new stream: what was
		// stored is skipped, the rest stored once.
		resp, err = send(msgs...)
		if err != nil {
			t.Fatal(err)
		}
		want = &experimentv1.StreamMetricsResponse{PointsReceived: 1500, PointsPersisted: 500, PointsDuplicate: 1000, MessagesReceived: 30, PersistedThroughSequence: 30}
		if diff := cmp.Diff(want, resp, protocmp.Transform()); diff != "" {
			t.Errorf("resent stream (-want +got):\n%s", diff)
		}
		if na, nb := len(h.history(t, a.GetRunId(), "loss", 0)), len(h.history(t, b.GetRunId(), "loss", 0)); na != 20*50 || nb != 10*50 {
			t.Errorf("stored %d and %d points, want 1000 and 500", na, nb)
		}
		if l := h.getRun(t, b.GetRunId()).GetLatestMetrics(); len(l) != 1 || l[0].GetStep() != 3049 {
			t.Errorf("latest of b: %v", l)
		}

		// A gap after the stored sequence is refused.
		_, err = send(msg(a, 35, 1))
		wantCode(t, "sequence gap", codes.FailedPrecondition, func() error { return err })

		// An invalid message ends the stream; the messages before it are
		// stored, nothing of it is.
		s, err := h.client.StreamMetrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		good := &experimentv1.StreamMetricsRequest{RunId: a.GetRunId(), Metrics: []*experimentv1.Metric{{Key: "partial", Value: 1}}}
		bad := &experimentv1.StreamMetricsRequest{RunId: a.GetRunId(), Metrics: []*experimentv1.Metric{{Key: "partial", Value: 2}, {Key: "partial", Value: math.NaN()}}}
		for _, m := range []*experimentv1.StreamMetricsRequest{good, good, bad, good} {
			if err := s.Send(m); err != nil {
				break // the server may end the stream before the last send
			}
		}
		_, err = s.CloseAndRecv()
		wantField(t, "NaN in a stream", "metrics[1].value", func() error { return err })
		if got := h.history(t, a.GetRunId(), "partial", 0); len(got) != 2 {
			t.Errorf("partial: %d points stored, want the 2 before the bad message", len(got))
		}

		// Without a stream id nothing is deduplicated.
		plain := &experimentv1.StreamMetricsRequest{RunId: b.GetRunId(), Metrics: []*experimentv1.Metric{{Key: "plain", Value: 1}}}
		for range 2 {
			if resp, err := send(plain); err != nil || resp.GetPointsPersisted() != 1 || resp.GetPersistedThroughSequence() != 0 {
				t.Fatalf("plain stream: %v %v", resp, err)
			}
		}
		if n := len(h.history(t, b.GetRunId(), "plain", 0)); n != 2 {
			t.Errorf("plain: %d points, want 2", n)
		}
	})
}

func TestMetricHistoryPages(t *testing.T) {
	runServer(t, func(t *testing.T, h *harness) {
		ctx := context.Background()
		r := h.newRun(t, "history")
		var want []*experimentv1.Metric
		req := &experimentv1.LogBatchRequest{RunId: r.GetRunId()}
		for i := range 40 {
			// Runs of identical points straddle page boundaries.
			m := &experimentv1.Metric{Key: "acc", Value: float64(i / 7), Step: int64(i / 7), TimestampMs: 1000}
			req.Metrics = append(req.Metrics, m)
			want = append(want, m)
		}
		if _, err := h.client.LogBatch(ctx, req); err != nil {
			t.Fatal(err)
		}
		for _, size := range []int32{1, 3, 7, 10, 40, 100} {
			if diff := cmp.Diff(want, h.history(t, r.GetRunId(), "acc", size), protocmp.Transform()); diff != "" {
				t.Errorf("page size %d (-want +got):\n%s", size, diff)
			}
		}
		first, err := h.client.GetMetricHistory(ctx, &experimentv1.GetMetricHistoryRequest{RunId: r.GetRunId(), MetricKey: "acc", PageSize: 5})
		if err != nil {
			t.Fatal(err)
		}
		wantField(t, "token of another metric", "page_token", func() error {
			_, err := h.client.GetMetricHistory(ctx, &experimentv1.GetMetricHistoryRequest{RunId: r.GetRunId(), MetricKey: "other", PageToken: first.GetNextPageToken()})
			return err
		})

		// Downsampling keeps the extremes and the ends.
		big := &experimentv1.LogBatchRequest{RunId: r.GetRunId()}
		for i := range 1000 {
			v := math.Sin(float64(i) / 50)
			if i == 517 {
				v = 10 // a spike
			}
			big.Metrics = append(big.Metrics, &experimentv1.Metric{Key: "wave", Value: v, Step: int64(i)})
		}
		if _, err := h.client.LogBatch(ctx, big); err != nil {
			t.Fatal(err)
		}
		ds, err := h.client.GetMetricHistory(ctx, &experimentv1.GetMetricHistoryRequest{RunId: r.GetRunId(), MetricKey: "wave", MaxPoints: 50})
		if err != nil {
			t.Fatal(err)
		}
		pts := ds.GetMetrics()
		if len(pts) != 50 || !ds.GetDownsampled() || ds.GetTotalPoints() != 1000 || ds.GetNextPageToken() != "" {
			t.Fatalf("downsampled: %d points, downsampled=%v, total=%d", len(pts), ds.GetDownsampled(), ds.GetTotalPoints())
		}
		spike := false
		for i, p := range pts {
			if i > 0 && p.GetStep() <= pts[i-1].GetStep() {
				t.Errorf("downsampled points out of order at %d", i)
			}
			spike = spike || p.GetValue() == 10
		}
		if pts[0].GetStep() != 0 || pts[49].GetStep() != 999 || !spike {
			t.Errorf("downsampling lost the ends or the spike: first %v last %v spike %v", pts[0], pts[49], spike)
		}
		small, err := h.client.GetMetricHistory(ctx, &experimentv1.GetMetricHistoryRequest{RunId: r.GetRunId(), MetricKey: "acc", MaxPoints: 100})
		if err != nil {
			t.Fatal(err)
		}
		if small.GetDownsampled() || len(small.GetMetrics()) != 40 {
			t.Errorf("a short series is returned whole: %d points, downsampled=%v", len(small.GetMetrics()), small.GetDownsampled())
		}
	})
}

func TestRunsOverREST(t *testing.T) {
	runServer(t, func(t *testing.T, h *harness) {
		code, body := h.rest(t, http.MethodPost, "/v1/experiments", `{"name":"rest-runs"}`)
		if code != http.StatusOK {
			t.Fatalf("create experiment: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodPost, "/v1/runs", `{"experimentId":"`+body["experimentId"].(string)+`","runName":"r1"}`)
		if code != http.StatusOK || body["runName"] != "r1" {
			t.Fatalf("create run: %d %v", code, body)
		}
		id := body["runId"].(string)
		code, body = h.rest(t, http.MethodPost, "/v1/runs/"+id+":logBatch",
			`{"metrics":[{"key":"train/loss","value":0.25,"step":"7"}],"params":[{"key":"lr","value":"0.1"}]}`)
		if code != http.StatusOK {
			t.Fatalf("log batch: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodPut, "/v1/runs/"+id+"/tags/owner/desk", `{"value":"x"}`)
		if code != http.StatusOK {
			t.Fatalf("set tag with '/' in the key: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodGet, "/v1/runs/"+id, "")
		if code != http.StatusOK || fmt.Sprint(body["params"]) != "map[lr:0.1]" || fmt.Sprint(body["tags"]) != "map[owner/desk:x]" {
			t.Fatalf("get run: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodGet, "/v1/runs/"+id+"/metrics/train/loss", "")
		if code != http.StatusOK || body["totalPoints"] != "1" {
			t.Fatalf("history: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodPatch, "/v1/runs/"+id, `{"status":"RUN_STATUS_FAILED"}`)
		if code != http.StatusOK || body["status"] != "RUN_STATUS_FAILED" || body["endTime"] == nil {
			t.Fatalf("patch run: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodPost, "/v1/runs/"+id+":logBatch", `{"metrics":[{"key":"","value":1}]}`)
		if code != http.StatusBadRequest || !strings.Contains(fmt.Sprint(body["details"]), "metrics[0].key") {
			t.Errorf("bad batch: %d %v", code, body)
		}
		code, _ = h.rest(t, http.MethodDelete, "/v1/runs/"+id, "")
		if code != http.StatusOK {
			t.Errorf("delete: %d", code)
		}
	})
}

func TestRunBadInput(t *testing.T) {
	runServer(t, func(t *testing.T, h *harness) {
		ctx := context.Background()
		r := h.newRun(t, "bad")
		id := r.GetRunId()
		unknown := "0192f1f0-5b7e-7c3a-9d2e-1a2b3c4d5e6f"
		long := strings.Repeat("k", 251)
		batch := func(req *experimentv1.LogBatchRequest) func() error {
			return func() error {
				req.RunId = id
				_, err := h.client.LogBatch(ctx, req)
				return err
			}
		}
		many := func(n int) []*experimentv1.Metric {
			out := make([]*experimentv1.Metric, n)
			for i := range out {
				out[i] = &experimentv1.Metric{Key: "m", Value: 1}
			}
			return out
		}
		invalid := []struct {
			name, field string
			call        func() error
		}{
			{"run without experiment", "experiment_id", func() error {
				_, err := h.client.CreateRun(ctx, &experimentv1.CreateRunRequest{})
				return err
			}},
			{"run name with control characters", "run_name", func() error {
				_, err := h.client.CreateRun(ctx, &experimentv1.CreateRunRequest{ExperimentId: unknown, RunName: "a\nb"})
				return err
			}},
			{"malformed run id", "run_id", func() error {
				_, err := h.client.GetRun(ctx, &experimentv1.GetRunRequest{RunId: "run-1"})
				return err
			}},
			{"empty metric key", "metrics[0].key", batch(&experimentv1.LogBatchRequest{Metrics: []*experimentv1.Metric{{Value: 1}}})},
			{"metric key over 250", "metrics[1].key", batch(&experimentv1.LogBatchRequest{Metrics: []*experimentv1.Metric{{Key: "ok", Value: 1}, {Key: long, Value: 1}}})},
			{"NaN", "metrics[0].value", batch(&experimentv1.LogBatchRequest{Metrics: []*experimentv1.Metric{{Key: "m", Value: math.NaN()}}})},
			{"+Inf", "metrics[0].value", batch(&experimentv1.LogBatchRequest{Metrics: []*experimentv1.Metric{{Key: "m", Value: math.Inf(1)}}})},
			{"-Inf", "metrics[0].value", batch(&experimentv1.LogBatchRequest{Metrics: []*experimentv1.Metric{{Key: "m", Value: math.Inf(-1)}}})},
			{"negative timestamp", "metrics[0].timestamp_ms", batch(&experimentv1.LogBatchRequest{Metrics: []*experimentv1.Metric{{Key: "m", Value: 1, TimestampMs: -1}}})},
			{"1001 metrics", "metrics", batch(&experimentv1.LogBatchRequest{Metrics: many(1001)})},
			{"empty param key", "params[0].key", batch(&experimentv1.LogBatchRequest{Params: []*experimentv1.Param{{Value: "v"}}})},
			{"param value over 6000", "params[0].value", batch(&experimentv1.LogBatchRequest{Params: []*experimentv1.Param{{Key: "p", Value: strings.Repeat("v", 6001)}}})},
			{"one param twice", "params[1].key", batch(&experimentv1.LogBatchRequest{Params: []*experimentv1.Param{{Key: "p", Value: "1"}, {Key: "p", Value: "2"}}})},
			{"tag key over 250", "tags[0].key", batch(&experimentv1.LogBatchRequest{Tags: []*experimentv1.Tag{{Key: long, Value: "v"}}})},
			{"idempotency key over 128", "idempotency_key", batch(&experimentv1.LogBatchRequest{IdempotencyKey: strings.Repeat("i", 129)})},
			{"blank tag key", "key", func() error {
				_, err := h.client.SetRunTag(ctx, &experimentv1.SetRunTagRequest{RunId: id, Key: "  "})
				return err
			}},
			{"update without mask", "update_mask", func() error {
				_, err := h.client.UpdateRun(ctx, &experimentv1.UpdateRunRequest{Run: &experimentv1.Run{RunId: id}})
				return err
			}},
			{"update of an immutable field", "update_mask", func() error {
				_, err := h.client.UpdateRun(ctx, &experimentv1.UpdateRunRequest{Run: &experimentv1.Run{RunId: id}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"params"}}})
				return err
			}},
			{"unspecified status", "run.status", func() error {
				_, err := h.client.UpdateRun(ctx, &experimentv1.UpdateRunRequest{Run: &experimentv1.Run{RunId: id}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"status"}}})
				return err
			}},
			{"history without key", "metric_key", func() error {
				_, err := h.client.GetMetricHistory(ctx, &experimentv1.GetMetricHistoryRequest{RunId: id})
				return err
			}},
			{"negative max_points", "max_points", func() error {
				_, err := h.client.GetMetricHistory(ctx, &experimentv1.GetMetricHistoryRequest{RunId: id, MetricKey: "m", MaxPoints: -1})
				return err
			}},
			{"max_points over the limit", "max_points", func() error {
				_, err := h.client.GetMetricHistory(ctx, &experimentv1.GetMetricHistoryRequest{RunId: id, MetricKey: "m", MaxPoints: 100_001})
				return err
			}},
			{"stream without sequence", "sequence", func() error {
				s, err := h.client.StreamMetrics(ctx)
				if err != nil {
					return err
				}
				_ = s.Send(&experimentv1.StreamMetricsRequest{RunId: id, StreamId: "s"})
				_, err = s.CloseAndRecv()
				return err
			}},
			{"stream that skips a sequence", "sequence", func() error {
				s, err := h.client.StreamMetrics(ctx)
				if err != nil {
					return err
				}
				_ = s.Send(&experimentv1.StreamMetricsRequest{RunId: id, StreamId: "s2", Sequence: 1})
				_ = s.Send(&experimentv1.StreamMetricsRequest{RunId: id, StreamId: "s2", Sequence: 3})
				_, err = s.CloseAndRecv()
				return err
			}},
			{"stream that changes its id", "stream_id", func() error {
				s, err := h.client.StreamMetrics(ctx)
				if err != nil {
					return err
				}
				_ = s.Send(&experimentv1.StreamMetricsRequest{RunId: id, StreamId: "s3", Sequence: 1})
				_ = s.Send(&experimentv1.StreamMetricsRequest{RunId: id, StreamId: "s4", Sequence: 2})
				_, err = s.CloseAndRecv()
				return err
			}},
		}
		for _, tt := range invalid {
			wantField(t, tt.name, tt.field, tt.call)
		}
		for name, call := range map[string]func() error{
			"get an unknown run": func() error {
				_, err := h.client.GetRun(ctx, &experimentv1.GetRunRequest{RunId: unknown})
				return err
			},
			"log to an unknown run": func() error {
				_, err := h.client.LogBatch(ctx, &experimentv1.LogBatchRequest{RunId: unknown, Metrics: []*experimentv1.Metric{{Key: "m", Value: 1}}})
				return err
			},
			"stream to an unknown run": func() error {
				s, err := h.client.StreamMetrics(ctx)
				if err != nil {
					return err
				}
				_ = s.Send(&experimentv1.StreamMetricsRequest{RunId: unknown, Metrics: []*experimentv1.Metric{{Key: "m", Value: 1}}})
				_, err = s.CloseAndRecv()
				return err
			},
			"history of an unknown run": func() error {
				_, err := h.client.GetMetricHistory(ctx, &experimentv1.GetMetricHistoryRequest{RunId: unknown, MetricKey: "m"})
				return err
			},
		} {
			wantCode(t, name, codes.NotFound, call)
		}
		// Nothing of the rejected batches was written.
		got := h.getRun(t, id)
		if len(got.GetLatestMetrics())+len(got.GetParams())+len(got.GetTags()) != 0 {
			t.Errorf("rejected input left writes: %v", got)
		}
	})
}
