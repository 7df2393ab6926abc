// A small typed client as a portal would write it over the generated types (codegen with
// docs/codegen.ts into generated/graphql.ts). Checked with `tsc --strict --noEmit`: a schema
// change that breaks a portal operation or its types fails here.
import type {
  ComputersPageQuery,
  ComputersPageQueryVariables,
  SessionsPageQuery,
  SessionsPageQueryVariables,
  SessionQuery,
  SessionQueryVariables,
  StartMaintenanceSessionMutation,
  StartMaintenanceSessionMutationVariables,
  SessionUpdatesSubscription,
  MaintenanceSessionStatus,
  Compliance,
} from './generated/graphql.js';

type Result<T> = { data?: T | null; errors?: { message: string; extensions?: { code?: string } }[] };

export class UpkeepClient {
  constructor(
    private readonly base: string,
    private readonly token: string,
  ) {}

  private async request<T, V extends Record<string, unknown>>(query: string, variables: V): Promise<T> {
    const res = await fetch(`${this.base}/graphql`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'application/graphql-response+json, application/json;q=0.9',
        authorization: `Bearer ${this.token}`,
      },
      body: JSON.stringify({ query, variables }),
    });
    const body = (await res.json()) as Result<T>;
    const first = body.errors?.[0];
    if (first) throw new Error(`${first.extensions?.code ?? 'ERROR'}: ${first.message}`);
    if (!body.data) throw new Error(`no data (${res.status})`);
    return body.data;
  }

  computers(query: string, v: ComputersPageQueryVariables): Promise<ComputersPageQuery> {
    return this.request(query, v);
  }

  sessions(query: string, v: SessionsPageQueryVariables): Promise<SessionsPageQuery> {
    return this.request(query, v);
  }

  session(query: string, v: SessionQueryVariables): Promise<SessionQuery> {
    return this.request(query, v);
  }

  start(query: string, v: StartMaintenanceSessionMutationVariables): Promise<StartMaintenanceSessionMutation> {
    return this.request(query, v);
  }
}

/** Every computer, page after page. */
export async function allComputers(c: UpkeepClient, query: string): Promise<ComputersPageQuery['computers']['edges'][number]['node'][]> {
  const out: ComputersPageQuery['computers']['edges'][number]['node'][] = [];
  let after: string | null = null;
  for (;;) {
    const page: ComputersPageQuery = await c.computers(query, { first: 100, after });
    out.push(...page.computers.edges.map((e) => e.node));
    if (!page.computers.pageInfo.hasNextPage) return out;
    after = page.computers.pageInfo.endCursor ?? null;
  }
}

/** A row of the fleet list: the types say which fields may be null. */
export function fleetRow(n: ComputersPageQuery['computers']['edges'][number]['node']): string {
  const seen: string = n.lastSeenAt === null ? 'never' : new Date(n.lastSeenAt).toISOString();
  const compliance: Compliance | 'UNKNOWN' = n.compliance ?? 'UNKNOWN';
  return `${n.name} (${n.tenant.name}) ${n.online ? 'online' : 'offline'} ${compliance} last seen ${seen} [${n.tags.join(', ')}]`;
}

/** Whether a status is final. */
export function isFinished(s: MaintenanceSessionStatus): boolean {
  switch (s) {
    case 'PASSED':
    case 'FAILED':
    case 'CANCELLED':
      return true;
    default:
      return false;
  }
}

/** What a subscription event shows in a live view. */
export function eventLine(e: SessionUpdatesSubscription['maintenanceSessionUpdates']): string {
  return `#${e.sequence} ${e.at} ${e.status}${e.logLine ? `: ${e.logLine}` : ''}`;
}

export function sessionSummary(q: SessionQuery): string {
  const s = q.maintenanceSession;
  const actions = s.actions.map((a) => `${a.kind}/${a.status}: ${a.reason}`).join('; ');
  return `${s.id} ${s.status}${s.statusReason ? ` (${s.statusReason})` : ''} ${actions}`;
}
