/*
 * qmp.c — a small blocking QMP client (see qmp.h).
 */
#include "qmp.h"
