// Starts GraphiQL on /graphql, with subscriptions over /graphql/ws (graphql-transport-ws).
// The headers pane's headers go with every request and, for subscriptions, in the
// connection_init payload ({"Authorization": "Bearer <token>"}).
(function () {
  'use strict';
  var here = window.location;
  var ws = (here.protocol === 'https:' ? 'wss://' : 'ws://') + here.host + '/graphql/ws';
  var defaultQuery = [
    '# Welcome to Upkeep\'s GraphQL API.',
    '#',
    '# 1. Run "Login" (the play button, then pick it)',
    '#    with your e-mail and password.',
    '# 2. Put the token it answers into Headers below:',
    '#    { "Authorization": "Bearer <token>" }',
    '#    (an API key, upk_…, works the same way).',
    '# 3. Run "Start": who you are and your first',
    '#    computers; pass pageInfo.endCursor as',
    '#    computers(after: …) for the next page.',
    '#',
    '# Docs (top left) describes every type and field.',
    '# Subscriptions (maintenanceSessionUpdates) run',
    '# here too, over /graphql/ws, with the same header.',
    '',
    'mutation Login {',
    '  login(email: "admin@msp.example", password: "change me please") {',
    '    token',
    '  }',
    '}',
    '',
    'query Start {',
    '  viewer {',
    '    kind',
    '    role',
    '    user { email }',
    '    apiKey { name }',
    '  }',
    '  computers(first: 10) {',
    '    edges {',
    '      node {',
    '        id',
    '        name',
    '        online',
    '        compliance',
    '      }',
    '    }',
    '    pageInfo {',
    '      hasNextPage',
    '      endCursor',
    '    }',
    '  }',
    '}',
    ''
  ].join('\n');
  // A link may carry the query to open (/graphql?query=…), as GraphiQL links often do.
  var linked = new URLSearchParams(here.search).get('query');
  var fetcher = GraphiQL.createFetcher({ url: '/graphql', subscriptionUrl: ws });
  ReactDOM.createRoot(document.getElementById('graphiql')).render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: defaultQuery,
      query: linked || undefined,
      defaultEditorToolsVisibility: 'headers',
      shouldPersistHeaders: true,
      isHeadersEditorEnabled: true
    })
  );
})();
