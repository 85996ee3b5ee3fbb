package metacontroller

import (
	"errors"

	"github.com/quantmesh/quantmesh/pkg/apierr"
)

func asInvalid(err error, target **apierr.InvalidError) bool { return errors.As(err, target) }
