/*
 * qmp.h — a small blocking client for QEMU's QMP (JSON over a UNIX
 * socket), used by the qemu tracker from worker threads.
 */
#ifndef REPLICAD_QMP_H
#define REPLICAD_QMP_H

#endif
