/* Placeholder until the native pod table lands. */
#include "native.h"
PyTypeObject lt_PodTableType = {PyVarObject_HEAD_INIT(NULL, 0) "balancer.policy._native.PodTable"};
