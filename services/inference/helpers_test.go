package inference_test

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/quantmesh/quantmesh/pkg/apierr/apierrtest"
)

var (
	wantCode  = apierrtest.Code
	wantField = apierrtest.Field
)

func timestamp(sec int64) *timestamppb.Timestamp { return timestamppb.New(time.Unix(sec, 0)) }
